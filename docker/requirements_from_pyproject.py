"""Print the project's requirements from pyproject.toml, one per line, for a container build.

    python3 requirements_from_pyproject.py pyproject.toml [EXTRA ...] [--gpu-wheels]

Installs dependencies without installing the project itself, so the image holds only the packages the
service (or the trainer) imports. ``--gpu-wheels`` asks for onnxruntime-gpu with its CUDA and cuDNN wheels
(the ``cuda`` and ``cudnn`` extras), so a host needs only the NVIDIA driver and container toolkit.
"""

import re
import sys

import tomllib


def main(argv: list[str]) -> int:
    gpu_wheels = "--gpu-wheels" in argv
    args = [a for a in argv if a != "--gpu-wheels"]
    with open(args[0], "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project["dependencies"])
    for extra in args[1:]:
        reqs += project["optional-dependencies"][extra]
    for req in reqs:
        if gpu_wheels and re.match(r"onnxruntime-gpu\b", req):
            req = re.sub(r"^onnxruntime-gpu(\[[^\]]*\])?", "onnxruntime-gpu[cuda,cudnn]", req)
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
