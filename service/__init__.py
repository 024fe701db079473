"""Inference service for the ResNet classifiers exported to ONNX (see ``models/README.md``).

Run it with ``python -m service``; build it in code with :func:`service.app.create_app`.
"""

__version__ = "0.1.0"
