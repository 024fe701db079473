"""Where a run's images come from: decoded arrays on the device (CIFAR-style) or a loader (ImageNet-style).

Both kinds hand the trainer batches of uint8 [N, H, W, 3] images on the device and run the device half of
their recipe's augmentation. Both name the files of their test (and validation) split: the errors a run
publishes are measured on the service's own crops of those files (:func:`served_batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from service.defaults import DEFAULT_MAX_IMAGE_PIXELS
from service.image_errors import ImageError
from service.preprocess import preprocess
from training import augment, distributed
from training.config import TrainConfig
from training.data import (
    CIFAR10_DEFAULT_ROOT,
    DataError,
    SplitArrays,
    SplitFiles,
    ensure_cifar10,
    hold_out,
    load_split,
    scan_split,
    subset,
)
from training.imagenet_data import TEST_RESIZE, train_loader

log = logging.getLogger(__name__)

EVAL_ROWS = 500  # crops in one forward pass when testing
T = TypeVar("T")
R = TypeVar("R")
Batches = Iterator[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std in pixel units: computed by a run (a result), not part of its config."""

    mean: list[float]
    std: list[float]


class DataSource(Protocol):
    """The images of one run, as the trainer and the evaluation need them."""

    classes: list[str]
    iters_per_epoch: int
    test_files: SplitFiles
    val_files: SplitFiles | None  # held out of the training images to choose the test resize size
    test_resize: int  # the test images' shorter side, unless one is chosen on val_files

    def normalisation(self) -> Normalisation:
        """Mean and std that a new run normalises with (a resumed run keeps the ones it saved)."""
        ...

    def batches(self, epoch: int, start: int) -> Batches:
        """This process's training batches of ``epoch`` from batch ``start`` on, in an order fixed by
        (seed, epoch), so a resumed run sees the same ones."""
        ...

    def augment(self, images: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator) -> Tensor:
        """The device half of the recipe's augmentation: uint8 NHWC to normalised, augmented NCHW."""
        ...

    def test_batches(self) -> Batches:
        """This process's share of the test images for the per-epoch error: their 1-crop at
        ``test_resize``, uint8 [N, 1, crop, crop, 3] on the device, and labels."""
        ...


def checked_iterations(iterations: int, images: int, batch_size: int) -> int:
    if iterations == 0:
        raise DataError(
            f"{images} training images are fewer than one batch of {batch_size}; lower --batch-size"
        )
    return iterations


def shard(files: SplitFiles, rank: int, world: int) -> SplitFiles:
    """Every ``world``-th file from ``rank`` on: one process's share of an evaluation."""
    return files.take(range(rank, len(files.paths), world))


def load_arrays(config: TrainConfig, rank: int) -> tuple[SplitArrays, SplitArrays, SplitArrays | None]:
    """The training, test and (with --val-size) validation arrays, after --limit-train/--limit-test."""
    root = Path(config.data)
    cache = Path(config.cache_dir) if config.cache_dir else None
    if root == CIFAR10_DEFAULT_ROOT and rank == 0:
        ensure_cifar10(root)
    distributed.barrier()
    with distributed.rank_zero_first(rank):  # rank 0 decodes and caches first; the others read the cache
        train = load_split(root, "train", config.crop_size, cache)
        test = load_split(root, "test", config.crop_size, cache, train.classes)
    val = None
    if config.val_size:
        if config.val_size >= len(train.labels):
            raise DataError(
                f"--val-size {config.val_size} leaves no training images (of {len(train.labels)})"
            )
        train, val = hold_out(train, config.val_size, config.seed)
    if config.limit_train:
        train = subset(train, config.limit_train, config.seed)
    if config.limit_test:
        test = subset(test, config.limit_test, config.seed)
    return train, test, val


class ArraySource:
    """CIFAR-style data: each split decoded once (and cached) at the crop size, kept on the device.

    The arrays are the service's 1-crop of each image at resize = crop size (``training.data.load_rgb``).
    """

    def __init__(self, config: TrainConfig, rank: int, world: int, device: torch.device) -> None:
        self.train, test, val = load_arrays(config, rank)
        self.classes = self.train.classes
        self.batch_size, self.seed, self.rank, self.world = config.batch_size, config.seed, rank, world
        self.iters_per_epoch = checked_iterations(
            len(self.train.labels) // config.batch_size, len(self.train.labels), config.batch_size
        )
        self.images = torch.from_numpy(self.train.images).to(device)
        self.labels = torch.from_numpy(self.train.labels).to(device)
        self.test_images = torch.from_numpy(test.images[rank::world]).to(device)
        self.test_labels = torch.from_numpy(test.labels[rank::world]).to(device)
        self.test_files = test.files
        self.val_files = val.files if val else None
        self.test_resize = config.crop_size

    def normalisation(self) -> Normalisation:
        """Per-channel mean and std of the training images."""
        pixels = self.train.images.reshape(-1, 3).astype(np.float64)
        return Normalisation(pixels.mean(0).round(3).tolist(), pixels.std(0).round(3).tolist())

    def batches(self, epoch: int, start: int) -> Batches:
        per_rank = self.batch_size // self.world
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed + epoch))
        for index in range(start, self.iters_per_epoch):
            first = index * self.batch_size + self.rank * per_rank
            picked = order[first : first + per_rank].to(self.images.device)
            yield self.images[picked], self.labels[picked]

    def augment(self, images: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator) -> Tensor:
        return augment.cifar_train_batch(images, mean, std, generator)

    def test_batches(self) -> Batches:
        for first in range(0, len(self.test_labels), EVAL_ROWS):
            last = first + EVAL_ROWS
            yield self.test_images[first:last, None], self.test_labels[first:last]


class LoaderSource:
    """ImageNet-style data: training images decoded and scale-augmented in loader workers."""

    def __init__(self, config: TrainConfig, rank: int, world: int, device: torch.device) -> None:
        root = Path(config.data)
        train = scan_split(root, "train")
        self.classes = train.classes
        self.loader = train_loader(train, config, rank, world)
        self.iters_per_epoch = checked_iterations(len(self.loader), len(train.paths), config.batch_size)
        self.test_files = scan_split(root, "test", self.classes)
        self.val_files: SplitFiles | None = None
        self.test_resize = TEST_RESIZE
        self.crop_size, self.threads = config.crop_size, max(1, config.workers)
        self.rank, self.world, self.device = rank, world, device

    def normalisation(self) -> Normalisation:
        """ImageNet's mean and std (the images are too many to measure)."""
        return Normalisation(list(augment.IMAGENET_MEAN), list(augment.IMAGENET_STD))

    def batches(self, epoch: int, start: int) -> Batches:
        sampler = self.loader.sampler
        assert isinstance(sampler, DistributedSampler)
        sampler.set_epoch(epoch)
        for index, (images, labels) in enumerate(self.loader):
            if index >= start:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def augment(self, images: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator) -> Tensor:
        return augment.imagenet_train_batch(images, mean, std, generator)

    def test_batches(self) -> Batches:
        share = shard(self.test_files, self.rank, self.world)
        return served_batches(share, self.test_resize, self.crop_size, 1, self.device, self.threads)


def open_source(config: TrainConfig, rank: int, world: int, device: torch.device) -> DataSource:
    if config.family == "imagenet":
        return LoaderSource(config, rank, world, device)
    return ArraySource(config, rank, world, device)


def map_ahead(function: Callable[[T], R], items: Sequence[T], chunk: int, threads: int) -> Iterator[list[R]]:
    """``function`` of each item, ``chunk`` items at a time, on a thread pool that computes the next chunk
    while the caller uses this one (Pillow decodes and resizes without holding the GIL)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def submit(start: int) -> list[Future[R]]:
            return [pool.submit(function, item) for item in items[start : start + chunk]]

        pending = submit(0)
        for start in range(chunk, len(items) + chunk, chunk):
            ready = [future.result() for future in pending]
            pending = submit(start)
            yield ready


def served_batches(
    files: SplitFiles, resize_size: int, crop_size: int, crops: int, device: torch.device, threads: int
) -> Batches:
    """The service's own crops of ``files`` (``service.preprocess.preprocess``: its decoder, JPEG draft,
    resize and crops), uint8 [N, crops, crop, crop, 3] on ``device``, with their labels.

    Files the service would refuse are logged and left out, as ``training/evaluate.py`` leaves them out.
    """

    def load(path: Path) -> np.ndarray | None:
        try:
            return preprocess(
                path.read_bytes(),
                resize_size=resize_size,
                crop_size=crop_size,
                crops=crops,
                max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
            )
        except (ImageError, OSError) as exc:
            log.warning("leaving out %s: %s", path, exc)
            return None

    per_batch = max(1, EVAL_ROWS // crops)
    chunks = map_ahead(load, files.paths, per_batch, threads)
    for start, rows in zip(range(0, len(files.paths), per_batch), chunks, strict=True):
        kept = [(row, files.labels[start + i]) for i, row in enumerate(rows) if row is not None]
        if kept:
            images = torch.from_numpy(np.stack([row for row, _ in kept])).to(device)
            yield images, torch.tensor([label for _, label in kept], device=device)
