"""Batched training augmentation does what the paper describes, pixel for pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.augment import cifar_train_batch, random_crop, random_flip


def _windows(padded: torch.Tensor, size: int) -> list[torch.Tensor]:
    h, w = padded.shape[-2:]
    return [padded[:, r : r + size, c : c + size] for r in range(h - size + 1) for c in range(w - size + 1)]


def test_random_crop_takes_a_window_of_each_image() -> None:
    images = torch.arange(4 * 3 * 10 * 10, dtype=torch.float32).view(4, 3, 10, 10)
    crops = random_crop(images, 6, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 6, 6)
    for image, crop in zip(images, crops, strict=True):
        assert any(torch.equal(crop, window) for window in _windows(image, 6))


def test_random_flip_mirrors_about_half_and_keeps_the_rest() -> None:
    images = torch.randn(200, 3, 4, 4)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(f, i.flip(2)) for f, i in zip(flipped, images, strict=True)]
    unchanged = [torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 60 < sum(mirrored) < 140


def test_cifar_batch_is_a_normalised_padded_window_possibly_mirrored() -> None:
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    mean, std = torch.tensor([120.0, 115.0, 100.0]), torch.tensor([60.0, 60.0, 62.0])
    out = cifar_train_batch(images, mean, std, torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, 32, 32) and out.is_contiguous(memory_format=torch.channels_last)
    normalised = ((images.float() - mean) / std).permute(0, 3, 1, 2)
    padded = F.pad(normalised, (4, 4, 4, 4))
    for image, crop in zip(padded, out, strict=True):
        candidates = _windows(image, 32)
        assert any(torch.allclose(crop, w) or torch.allclose(crop, w.flip(2)) for w in candidates)
