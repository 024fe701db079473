"""Class activation maps (Zhou et al., "Learning Deep Features for Discriminative Localization", 2016).

A ResNet ends in global average pooling and one linear layer, so the evidence for class ``c`` at each place
of the last block's feature map ``A`` ([channels, h, w] per crop) is ``sum_k w[c, k] * A[k]``: exact, no
gradients, computed here with numpy from the session's feature output and the classifier's weights.

The maps of the crops are put back where the crops came from (``service.crop_geometry``): feature cell
``(i, j)`` of a crop stands for the crop's pixels ``(y, x)`` with ``y * h // crop_size == i`` and
``x * w // crop_size == j``; a mirrored crop's pixels are unflipped (its column ``x`` is the image's
column ``left + crop_size - 1 - x``); where crops overlap their maps are
averaged. The average over the resized image is pooled onto a grid of feature-cell-sized cells (``crop_size
/ h`` pixels of the resized image each; pixel ``y`` of the resized image is in grid row ``y * h //
crop_size``) over the whole image, which is what clients overlay on the photo they sent: the resized image
is the whole photo, scaled. Cells that no crop saw (the sides of a wide photo with one crop) are NaN.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.crop_geometry import CropWindow


@dataclass(frozen=True)
class ClassMap:
    """One class's map over the image: ``values`` [grid rows, grid columns], NaN where no crop looked."""

    index: int
    values: np.ndarray


def crop_maps(features: np.ndarray, weights: np.ndarray, index: int) -> np.ndarray:
    """``[crops, h, w]``: the map of class ``index`` on each crop (``features`` [crops, channels, h, w])."""
    return np.einsum("k,nkhw->nhw", weights[index].astype(np.float32), features.astype(np.float32))


def image_map(
    maps: np.ndarray, windows: Sequence[CropWindow], resized: tuple[int, int], crop_size: int
) -> np.ndarray:
    """The crops' maps averaged in the coordinates of the resized (``width``, ``height``) image, then pooled
    onto the grid (see the module docstring): ``[grid rows, grid columns]``, NaN where no crop looked."""
    width, height = resized
    h, w = maps.shape[1:]
    rows = (np.arange(crop_size) * h) // crop_size  # the feature cell of each crop pixel
    cols = (np.arange(crop_size) * w) // crop_size
    total = np.zeros((height, width), np.float32)
    count = np.zeros((height, width), np.uint8)
    for crop_map, window in zip(maps, windows, strict=True):
        pixels = crop_map[rows][:, cols]
        if window.mirrored:
            pixels = pixels[:, ::-1]
        box = (slice(window.top, window.top + crop_size), slice(window.left, window.left + crop_size))
        total[box] += pixels
        count[box] += 1
    grid_rows, grid_cols = -(-height * h // crop_size), -(-width * w // crop_size)
    # int32: a 4-million-pixel panorama (SERVE_MAX_RESIZED_PIXELS) needs 16 MB of cell indices, not 32
    ys, xs = np.arange(height, dtype=np.int32), np.arange(width, dtype=np.int32)
    cell = ((ys * h) // crop_size)[:, None] * np.int32(grid_cols) + (xs * w) // crop_size
    seen = count > 0
    sums = np.bincount(cell[seen], weights=(total[seen] / count[seen]), minlength=grid_rows * grid_cols)
    pixels = np.bincount(cell[seen], minlength=grid_rows * grid_cols)
    grid = np.full(grid_rows * grid_cols, np.nan, np.float32)
    np.divide(sums, pixels, out=grid, where=pixels > 0, casting="unsafe")
    return grid.reshape(grid_rows, grid_cols)


def explain(
    features: np.ndarray,
    weights: np.ndarray,
    indices: Sequence[int],
    windows: Sequence[CropWindow],
    resized: tuple[int, int],
    crop_size: int,
) -> list[ClassMap]:
    """The map of each class of ``indices`` over one image, from its crops' ``features``."""
    return [
        ClassMap(i, image_map(crop_maps(features, weights, i), windows, resized, crop_size)) for i in indices
    ]


@dataclass(frozen=True)
class Heatmap:
    """A map as a grayscale PNG with alpha: 0-255 from the smallest to the largest value, alpha 0 where
    no crop looked; ``low``/``high`` are the values 0 and 255 stand for."""

    png: bytes
    width: int
    height: int
    low: float
    high: float

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


def heatmap(values: np.ndarray) -> Heatmap:
    """``values`` (NaN: not seen) normalised to 0-255 as a grayscale-and-alpha PNG of the same grid."""
    seen = ~np.isnan(values)
    low = float(values[seen].min()) if seen.any() else 0.0
    high = float(values[seen].max()) if seen.any() else 0.0
    span = high - low
    scaled = np.zeros(values.shape, np.float32)
    if span > 0:
        scaled[seen] = (values[seen] - low) / span * 255.0
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    alpha = np.where(seen, 255, 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gray, alpha], axis=-1)).save(buffer, "PNG")
    return Heatmap(buffer.getvalue(), values.shape[1], values.shape[0], low, high)
