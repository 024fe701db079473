"""Batched training augmentation, run on the training device (the GPU when there is one).

Images arrive as uint8 [N, H, W, 3] tensors; everything here works on whole batches, so an epoch is bound by
the network, not by per-image Python code. Test-time crops are not made here: they are the service's own
(``service.preprocess.make_crops``), so the published errors are measured on the pixels the service serves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# AlexNet's PCA of ImageNet RGB pixels (Krizhevsky et al. 2012), used by the paper's colour augmentation.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 NHWC -> float NCHW ((x - mean) / std), channels-last in memory."""
    return ((images.float() - mean) / std).permute(0, 3, 1, 2)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror a random half of an NCHW batch horizontally."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_crop(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A random ``size`` x ``size`` window of each NCHW image, all gathered in one indexing operation."""
    n, _, height, width = images.shape
    top = torch.randint(0, height - size + 1, (n,), device=images.device, generator=generator)
    left = torch.randint(0, width - size + 1, (n,), device=images.device, generator=generator)
    offsets = torch.arange(size, device=images.device)
    rows = (top[:, None] + offsets)[:, None, :, None]
    cols = (left[:, None] + offsets)[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channels, rows, cols]


def cifar_train_batch(
    images: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator, pad: int = 4
) -> Tensor:
    """The paper's CIFAR augmentation: mean subtraction, 4-pixel zero padding, random crop, random flip."""
    x = normalize(images, mean, std)
    x = random_crop(F.pad(x, (pad, pad, pad, pad)), images.shape[1], generator)
    return random_flip(x, generator).contiguous(memory_format=torch.channels_last)


def lighting(images: Tensor, generator: torch.Generator, alpha_std: float = 0.1) -> Tensor:
    """AlexNet-style PCA colour augmentation on normalised NCHW images (pixel scale 0-255 / std)."""
    eigval = torch.tensor(IMAGENET_EIGVAL, device=images.device)
    eigvec = torch.tensor(IMAGENET_EIGVEC, device=images.device)
    alpha = torch.randn(images.shape[0], 3, device=images.device, generator=generator) * alpha_std
    shift = (alpha * eigval) @ eigvec.T * 255.0  # [N, 3] RGB offsets in pixel units
    std = torch.tensor(IMAGENET_STD, device=images.device)
    return images + (shift / std)[:, :, None, None]


def imagenet_train_batch(images: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator) -> Tensor:
    """Device half of the ImageNet recipe: flip, PCA lighting, mean subtraction (scale/crop ran per image)."""
    x = lighting(normalize(images, mean, std), generator)
    return random_flip(x, generator).contiguous(memory_format=torch.channels_last)
