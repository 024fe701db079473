"""Twenty labelled ImageNet photos for checking an ImageNet model: foolbox's validation samples.

``foolbox==3.3.4`` (MIT) ships 20 ImageNet validation JPEGs as ``foolbox/data/imagenet_NN_LABEL.jpg``; the
wheel is fetched once with ``pip download`` into the cache and read as a zip, nothing is installed.
Run ``python -m training.imagenet_samples DIR`` to lay them out as ``DIR/<label index>/<file>.jpg``, the
layout ``training/evaluate.py`` and ``training/quantize.py --evaluation`` read.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path("cache")
FOOLBOX = "foolbox==3.3.4"
FOOLBOX_WHEEL = "foolbox-3.3.4-py3-none-any.whl"
IMAGE_NAME = re.compile(r"^foolbox/data/imagenet_(\d+)_(\d+)\.jpg$")


@dataclass(frozen=True)
class Sample:
    name: str
    label: int
    data: bytes


def foolbox_wheel(cache_dir: Path = CACHE) -> Path | None:
    """The foolbox wheel in ``cache_dir``, downloaded with pip when absent; None where pip cannot get it."""
    wheel = cache_dir / FOOLBOX_WHEEL
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", FOOLBOX, "-d", str(cache_dir)]
        subprocess.run(command, capture_output=True, timeout=300, check=False)
    return wheel if wheel.is_file() else None


def foolbox_imagenet(wheel: Path) -> list[Sample]:
    """The 20 labelled ImageNet JPEGs of the wheel, in file-name order."""
    samples = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            match = IMAGE_NAME.match(name)
            if match:
                samples.append(Sample(Path(name).name, int(match.group(2)), archive.read(name)))
    return samples


def write_by_index(samples: list[Sample], root: Path) -> Path:
    """Lay the samples out as ``root/<label index>/<file>``, the ImageNet layout of training/evaluate.py."""
    for sample in samples:
        folder = root / str(sample.label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sample.name).write_bytes(sample.data)
    return root


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data/foolbox-imagenet")
    found = foolbox_wheel()
    if found is None:
        sys.exit(f"could not download {FOOLBOX} with pip")
    print(write_by_index(foolbox_imagenet(found), target))
