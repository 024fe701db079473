"""Print the project's requirements from pyproject.toml, one per line, for a container build.

    python3 requirements_from_pyproject.py pyproject.toml [EXTRA ...] [--gpu-wheels] [--only NAME,NAME]

Installs dependencies without installing the project itself, so the image holds only the packages the
service (or the trainer) imports. ``--gpu-wheels`` asks for onnxruntime-gpu with its CUDA and cuDNN wheels
(the ``cuda`` and ``cudnn`` extras), so a host needs only the NVIDIA driver and container toolkit.
``--only`` keeps the named packages of the extras (with their versions), e.g. torch without torchvision.
"""

import re
import sys

import tomllib


def main(argv: list[str]) -> int:
    gpu_wheels = "--gpu-wheels" in argv
    only: set[str] = set()
    if "--only" in argv:
        at = argv.index("--only")
        only = set(argv[at + 1].split(","))
        argv = argv[:at] + argv[at + 2 :]
    args = [a for a in argv if a != "--gpu-wheels"]
    with open(args[0], "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project["dependencies"])
    for extra in args[1:]:
        extras = project["optional-dependencies"][extra]
        reqs += [r for r in extras if not only or re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] in only]
    for req in reqs:
        if gpu_wheels and re.match(r"onnxruntime-gpu\b", req):
            req = re.sub(r"^onnxruntime-gpu(\[[^\]]*\])?", "onnxruntime-gpu[cuda,cudnn]", req)
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
