"""Tiny generated ImageFolder data sets, so training tests run in seconds and need no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "square", "stripe")


def write_imagefolder(root: Path, train_per_class: int = 16, test_per_class: int = 4, size: int = 32) -> Path:
    """Three visually distinct classes of ``size`` x ``size`` RGB PNGs under ``root/{train,test}/<class>``."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., index] += 150  # the class is the dominant colour channel
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("tiny") / "shapes")


@pytest.fixture
def train_args(tiny_data: Path, tmp_path: Path) -> list[str]:
    """Arguments for a fast CPU run on the tiny data set (4 iterations per epoch)."""
    return [
        "--data", str(tiny_data), "--batch-size", "12", "--device", "cpu", "--no-progress",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
    ]  # fmt: skip
