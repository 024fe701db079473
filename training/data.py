"""ImageFolder data sets: scanning, validation, decoding once into cached uint8 arrays.

Layout: ``ROOT/train/<class>/*.jpg|png|...`` and ``ROOT/test/<class>/...`` (or ``val/``); class names are the
folder names, sorted. Images are decoded by the service's own pipeline, so a network trains and is tested on
the pixels it is served: unreadable files, and files the service would refuse, are reported and skipped; an
empty or absent split is a clear ``DataError``, raised before any training starts.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.atomic_file import atomic_write
from service.defaults import DEFAULT_MAX_IMAGE_PIXELS
from service.image_errors import ImageError
from service.preprocess import preprocess

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
CIFAR10_DEFAULT_ROOT = Path("data/cifar10")
SHARED_CIFAR10_ARCHIVE = Path("../shared/data/cifar10-jpeg.tar.gz")
IMBALANCE_LIMIT = 20  # a class with 20x fewer images than the largest one is almost surely a mistake
DECODER_VERSION = 2  # in the cache key: 2 decodes with the service's pipeline (torchvision's geometry)


class DataError(Exception):
    """The data set is missing or unusable; the message says what to do."""


def missing_data_message(root: Path) -> str:
    return (
        f"no image data at {root}/train (expected ImageFolder layout: {root}/train/<class>/*.jpg and "
        f"{root}/test/<class>/*.jpg).\n"
        f"To train on CIFAR-10, either unpack the project's copy:\n"
        f"    mkdir -p data && tar -xzf {SHARED_CIFAR10_ARCHIVE} -C data\n"
        f"or install torchvision on a machine with network access and run again (it downloads CIFAR-10 into "
        f"{CIFAR10_DEFAULT_ROOT}),\n"
        f"or point --data at your own ImageFolder directory."
    )


@dataclass
class SplitFiles:
    """The files of one split and their class indices."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def take(self, rows: Sequence[int]) -> SplitFiles:
        return SplitFiles(
            self.root, [self.paths[i] for i in rows], [self.labels[i] for i in rows], self.classes
        )


@dataclass
class SplitArrays:
    """One split decoded: ``images`` uint8 [N, H, W, 3] RGB, ``labels`` int64 [N] and the file of each row."""

    images: np.ndarray
    labels: np.ndarray
    files: SplitFiles

    @property
    def classes(self) -> list[str]:
        return self.files.classes

    def take(self, rows: np.ndarray) -> SplitArrays:
        return SplitArrays(self.images[rows], self.labels[rows], self.files.take(rows.tolist()))


def split_dir(root: Path, split: str) -> Path:
    """``ROOT/<split>``; the test split may also be called ``val``."""
    candidates = [root / split] + ([root / "val"] if split == "test" else [])
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(
        missing_data_message(root)
        if split == "train"
        else f"no '{split}' split under {root}: expected {root}/{split}/<class>/ folders"
        + (f" (or {root}/val/)" if split == "test" else "")
    )


def scan_split(root: Path, split: str, classes: list[str] | None = None) -> SplitFiles:
    """List a split's image files; ``classes`` (the training split's) must match when given."""
    directory = split_dir(root, split)
    found = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{directory} has no class folders: expected {directory}/<class>/<image files>")
    if classes is not None and found != classes:
        raise DataError(
            f"the classes of {directory} ({', '.join(found)}) differ from the training classes "
            f"({', '.join(classes)})"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(found):
        files = sorted(
            p for p in (directory / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(f"class folder {directory / name} has no image files ({split} split)")
        paths += files
        labels += [index] * len(files)
    return SplitFiles(directory, paths, labels, found)


def load_rgb(path: Path, size: int) -> np.ndarray:
    """One image as the service's 1-crop at resize = crop = ``size`` sees it: uint8 [size, size, 3].

    Raises ``ImageError`` (or ``OSError``) for a file the service would refuse.
    """
    crops = preprocess(
        path.read_bytes(), resize_size=size, crop_size=size, crops=1, max_pixels=DEFAULT_MAX_IMAGE_PIXELS
    )
    return crops[0]


def decode_split(files: SplitFiles, size: int) -> SplitArrays:
    """Decode every file; unreadable ones are logged with their reason and skipped."""
    images, kept = [], []
    for index, path in enumerate(files.paths):
        try:
            images.append(load_rgb(path, size))
        except (ImageError, OSError) as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
            continue
        kept.append(index)
    arrays = SplitArrays(
        np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        np.asarray([files.labels[i] for i in kept], dtype=np.int64),
        files.take(kept),
    )
    if len(kept) < len(files.paths):
        skipped = len(files.paths) - len(kept)
        log.warning("%s: skipped %d unreadable image(s) of %d", files.root, skipped, len(files.paths))
    check_balance(arrays, files.root)
    return arrays


def check_balance(arrays: SplitArrays, where: Path) -> None:
    """Refuse a split with an empty class or one far smaller than the rest, before training on it."""
    counts = np.bincount(arrays.labels, minlength=len(arrays.classes))
    empty = [arrays.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{where}: no readable images for class(es) {', '.join(empty)}")
    if counts.max() > IMBALANCE_LIMIT * counts.min():
        smallest = arrays.classes[int(counts.argmin())]
        raise DataError(
            f"{where}: class '{smallest}' has {counts.min()} images against {counts.max()} for the largest; "
            f"this split looks incomplete (more than {IMBALANCE_LIMIT}x imbalance)"
        )


def cache_key(files: SplitFiles, size: int) -> str:
    digest = hashlib.sha256(f"{files.root.resolve()}|{size}|{len(files.paths)}|{DECODER_VERSION}".encode())
    for path in files.paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def load_split(
    root: Path, split: str, size: int, cache_dir: Path | None, classes: list[str] | None = None
) -> SplitArrays:
    """Scan, decode and cache a split; later calls read the cached arrays (a few ms instead of seconds)."""
    files = scan_split(root, split, classes)
    cache = cache_dir / f"{split}-{cache_key(files, size)}.npz" if cache_dir else None
    if cache and cache.exists():
        with np.load(cache) as stored:
            return SplitArrays(stored["images"], stored["labels"], files.take(stored["kept"].tolist()))
    log.info("decoding %d images of %s (cached afterwards)", len(files.paths), files.root)
    arrays = decode_split(files, size)
    if cache:
        position = {path: index for index, path in enumerate(files.paths)}
        kept = np.asarray([position[path] for path in arrays.files.paths], np.int64)
        images, labels = arrays.images, arrays.labels
        atomic_write(cache, lambda handle: np.savez(handle, images=images, labels=labels, kept=kept))
    return arrays


def subset(arrays: SplitArrays, count: int, seed: int) -> SplitArrays:
    """A seeded random subset of ``count`` images, class-balanced in expectation."""
    if count >= len(arrays.labels):
        return arrays
    return arrays.take(np.sort(np.random.default_rng(seed).permutation(len(arrays.labels))[:count]))


def hold_out(arrays: SplitArrays, count: int, seed: int) -> tuple[SplitArrays, SplitArrays]:
    """Split off ``count`` images as a validation set (the paper's 45k/5k CIFAR protocol)."""
    order = np.random.default_rng(seed).permutation(len(arrays.labels))
    return arrays.take(np.sort(order[count:])), arrays.take(np.sort(order[:count]))


def ensure_cifar10(root: Path) -> None:
    """Provide CIFAR-10 at ``root`` when it is absent: download with torchvision if possible, else explain."""
    if (root / "train").is_dir():
        return
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as exc:
        raise DataError(missing_data_message(root)) from exc
    log.info("CIFAR-10 not found at %s: downloading it with torchvision", root)
    download_dir = root.parent / "cifar10-download"
    staging = root.with_name(root.name + ".partial")  # renamed into place only when complete
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for split, train in (("train", True), ("test", False)):
            dataset = CIFAR10(str(download_dir), train=train, download=True)
            counts: dict[str, int] = {}
            for image, label in dataset:
                name = dataset.classes[label]
                target = staging / split / name / f"{counts.get(name, 0):04d}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                image.save(target)
                counts[name] = counts.get(name, 0) + 1
    except Exception as exc:  # network refused, disk full, ...: say how to get data another way
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"downloading CIFAR-10 failed ({exc}).\n" + missing_data_message(root)) from exc
    staging.rename(root)
