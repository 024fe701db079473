"""ImageNet-style training images (large, of varied sizes): decoded and scale-augmented in loader workers.

Each image is decoded by the service's decoder (EXIF orientation, any mode to RGB), its shorter side resized
to a random size in [256, 480] by the shared resize rule, and a random 224x224 crop taken (the paper's scale
augmentation); flip, PCA lighting and mean subtraction then run batched on the device (``training.augment``).
Test images are not loaded here: they are evaluated as the service serves them (``training.sources``).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from service.crop_geometry import resized_size
from service.defaults import DEFAULT_MAX_IMAGE_PIXELS
from service.preprocess import decode_image
from training.config import TrainConfig
from training.data import SplitFiles

SCALE_RANGE = (256, 480)
TEST_RESIZE = 256  # the shorter side of a test image before its 224x224 crops


class ScaleAugmented(Dataset[tuple[torch.Tensor, int]]):
    """Training images at a random scale and position: uint8 [crop, crop, 3] and the class index."""

    def __init__(self, files: SplitFiles, crop: int) -> None:
        self.files = files
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_image(self.files.paths[index].read_bytes(), max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
        size = resized_size(image.width, image.height, random.randint(*SCALE_RANGE))
        image = image.resize(size, Image.Resampling.BILINEAR)
        left = random.randint(0, image.width - self.crop)
        top = random.randint(0, image.height - self.crop)
        pixels = np.asarray(image.crop((left, top, left + self.crop, top + self.crop)), dtype=np.uint8)
        return torch.from_numpy(pixels.copy()), self.files.labels[index]


def train_loader(files: SplitFiles, config: TrainConfig, rank: int, world: int) -> DataLoader:
    """This process's share of the scale-augmented training images, reshuffled each epoch (``set_epoch``)."""
    dataset = ScaleAugmented(files, config.crop_size)
    sampler: DistributedSampler[tuple[torch.Tensor, int]] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed
    )
    return DataLoader(
        dataset,
        batch_size=config.batch_size // world,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=config.workers > 0,
    )
