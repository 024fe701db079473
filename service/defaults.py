"""Defaults the service's settings and the offline evaluator share, so both decode and run models alike.

``training/evaluate.py`` measures a model the way the service serves it; it takes these constants rather than
reading them out of the service's settings class.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_PROVIDERS = "tensorrt,cuda,cpu"  # best first; CPU is always the last fallback
DEFAULT_TRT_CACHE_DIR = Path("cache/tensorrt")
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000  # declared pixels; a decompression bomb claims more
