"""The paper's test-time crop geometry, defined once for the service, the evaluator and training.

An image's shorter side is resized to ``resize_size`` and the longer side scaled and truncated, as
torchvision's ``Resize(int)`` does (a 640x427 photo at 256 becomes 383x256). The crops of the resized
image are, in this order: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, 4 centre (its origin
rounded, as torchvision's ``center_crop`` does), then 5-9 the horizontal mirrors of 0-4 in the same order.
One crop is the centre crop alone. Pure Python: the torch-free service and the training code both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

CROP_COUNTS = (1, 10)


@dataclass(frozen=True)
class CropWindow:
    """A ``crop_size`` square of the resized image at (``top``, ``left``), mirrored left-right or not."""

    top: int
    left: int
    mirrored: bool = False


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` and the aspect ratio kept, the longer side truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_origins(width: int, height: int, crop_size: int) -> list[tuple[int, int]]:
    """(top, left) of the top-left, top-right, bottom-left, bottom-right and centre crops."""
    bottom, right = height - crop_size, width - crop_size
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), (round(bottom / 2), round(right / 2))]


def crop_windows(width: int, height: int, crop_size: int, crops: int) -> list[CropWindow]:
    """The ``crops`` (1 or 10) windows of a resized ``width`` x ``height`` image, in the order above."""
    if crops not in CROP_COUNTS:
        raise ValueError(f"crops must be 1 or 10, not {crops}")
    if min(width, height) < crop_size:
        raise ValueError(f"a {width}x{height} image has no {crop_size}x{crop_size} crop")
    origins = crop_origins(width, height, crop_size)
    if crops == 1:
        return [CropWindow(*origins[4])]
    return [CropWindow(*origin) for origin in origins] + [CropWindow(*o, mirrored=True) for o in origins]
