"""TorchServe handler doing the service's 10-crop test, written as a TorchServe user writes one.

Per request: PIL decode, shorter side resized to 256 (bilinear, the longer side scaled and truncated),
the 4 corner and the centre 224 crops and their mirrors, normalised with the ImageNet mean/std in pixel
units (what the served ONNX model's ``PixelInput`` does). A TorchServe batch of N requests is one
forward of N x 10 rows; each request's answer is the top 5 of its 10 softmaxes averaged. No import of
the project's ``service`` package: the geometry is restated here, as a user would.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch  # noqa: TID251 - runs in TorchServe's worker (its own venv), not in the service
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
RESIZE_SIZE, CROP_SIZE, CROPS, TOP_K = 256, 224, 10, 5


def ten_crops(data: bytes) -> np.ndarray:
    """uint8 [10, 224, 224, 3]: top-left, top-right, bottom-left, bottom-right, centre, then their mirrors."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    if width <= height:
        size = (RESIZE_SIZE, int(RESIZE_SIZE * height / width))
    else:
        size = (int(RESIZE_SIZE * width / height), RESIZE_SIZE)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    bottom, right = size[1] - CROP_SIZE, size[0] - CROP_SIZE
    origins = [(0, 0), (0, right), (bottom, 0), (bottom, right), (round(bottom / 2), round(right / 2))]
    crops = np.stack([pixels[top : top + CROP_SIZE, left : left + CROP_SIZE] for top, left in origins])
    return np.concatenate([crops, crops[:, :, ::-1]])


class TenCropClassifier(BaseHandler):
    """BaseHandler loads the eager model and runs ``inference`` under ``torch.inference_mode``."""

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.mean = torch.tensor(MEAN).view(1, 1, 1, 3)
        self.inv_std = 1.0 / torch.tensor(STD).view(1, 1, 1, 3)

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        """The raw request bodies (JPEG bytes) of the batch -> float [N x 10, 3, 224, 224]."""
        rows = np.concatenate([ten_crops(bytes(row.get("data") or row["body"])) for row in data])
        pixels = (torch.from_numpy(rows).float() - self.mean) * self.inv_std
        return pixels.permute(0, 3, 1, 2).contiguous()

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        """One answer per request: the top 5 of the mean of its 10 crops' softmaxes."""
        probabilities = torch.softmax(data, dim=1).view(-1, CROPS, data.shape[1]).mean(dim=1)
        values, indices = probabilities.topk(TOP_K, dim=1)
        return [
            {
                "predictions": [
                    {"index": int(i), "probability": float(p)}
                    for p, i in zip(row_values, row_indices, strict=True)
                ]
            }
            for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True)
        ]
