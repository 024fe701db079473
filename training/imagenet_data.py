"""ImageNet-style data (large images of varied sizes): decoded per image in loader workers.

Training images get the paper's scale augmentation (shorter side random in [256, 480], random 224x224 crop);
flip, PCA lighting and mean subtraction then run batched on the device (``training.augment``). Test images
are resized to a shorter side of 256 and centre-cropped to 256x256, from which 1 or 10 crops are taken.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from training import distributed
from training.data import scan_split

SCALE_RANGE = (256, 480)
TEST_SIZE = 256


class ImageFolderDataset(Dataset[tuple[torch.Tensor, int]]):
    def __init__(
        self, root: Path, split: str, train: bool, crop: int, classes: list[str] | None = None
    ) -> None:
        self.files = scan_split(root, split, classes)
        self.train = train
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files.paths[index]) as image:
            rgb = image.convert("RGB")
        shorter = random.randint(*SCALE_RANGE) if self.train else TEST_SIZE
        scale = shorter / min(rgb.size)
        rgb = rgb.resize(
            (max(shorter, round(rgb.width * scale)), max(shorter, round(rgb.height * scale))),
            Image.Resampling.BILINEAR,
        )
        size = self.crop if self.train else TEST_SIZE
        left = random.randint(0, rgb.width - size) if self.train else (rgb.width - size) // 2
        top = random.randint(0, rgb.height - size) if self.train else (rgb.height - size) // 2
        pixels = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)
        return torch.from_numpy(pixels.copy()), self.files.labels[index]


def imagenet_loader(
    root: Path, split: str, config: Any, rank: int, classes: list[str] | None = None
) -> tuple[DataLoader, list[str]]:
    train = split == "train"
    dataset = ImageFolderDataset(root, split, train, config.crop_size, classes)
    world = distributed.world_size()
    sampler: DistributedSampler[tuple[torch.Tensor, int]] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=train, seed=config.seed
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size // world,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=train,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=config.workers > 0,
    )
    return loader, dataset.files.classes
