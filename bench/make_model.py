"""The benchmark models: a random-weight ResNet-50 exported by ``training/export.py``, and its INT8 twin.

Writes ``bench/.work/models/resnet50-random.onnx`` (the served contract: uint8 [N, H, W, 3] RGB in,
``logits`` out, the ``features`` output of class activation maps, metadata attached, parity with PyTorch
checked), ``bench/.work/resnet50-random.pt``
(the same network's state dict, which the PyTorch eager baseline loads) and
``bench/.work/models/resnet50-random-int8.onnx``: the same model through ``training/quantize.py``'s
quantizer, calibrated on the benchmark photos' centre crops. Random weights: speed only, so the INT8
model's accuracy is not measured here (``training/quantize.py`` does that for real models).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common import (
    CROP_SIZE,
    INT8_MODEL_PATH,
    MEAN,
    MODEL_PATH,
    RESIZE_SIZE,
    STATE_PATH,
    STD,
    load_images,
    prepare_images,
)

from service.model_contract import ModelCard

if TYPE_CHECKING:  # torch is imported only when a network is built
    from training.models import ResNet


def build_network(seed: int = 0) -> ResNet:
    import torch

    from training.models import build_model

    torch.manual_seed(seed)
    network = build_model("resnet50")
    network.eval()
    return network


def random_card() -> ModelCard:
    """The model card of the random-weight benchmark ResNet-50 (1000 placeholder classes)."""
    return ModelCard(
        labels=tuple(f"class{i}" for i in range(1000)),
        crop_size=CROP_SIZE,
        resize_size=RESIZE_SIZE,
        arch="resnet50",
        dataset="random",
        checkpoint_sha256="0" * 64,
    )


def current(path: Path) -> bool:
    """``path`` exists and has the feature output (files made before it are made again)."""
    from service.model_contract import read_model_metadata

    return path.is_file() and read_model_metadata(path).cam is not None


def made_from(int8: Path, fp32: Path) -> bool:
    """Whether ``int8`` was quantized from this ``fp32`` file (not from an earlier export)."""
    from service.model_contract import read_model_metadata
    from training.digest import sha256_file

    recorded = read_model_metadata(int8).quantization or {}
    return bool(recorded.get("parent_sha256") == sha256_file(fp32))


def make_model(force: bool = False) -> Path:
    if current(MODEL_PATH) and STATE_PATH.is_file() and not force:
        return MODEL_PATH
    import torch

    from training.export import PixelInput, export_model

    network = build_network()
    STATE_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), STATE_PATH)
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    return export_model(PixelInput(network, MEAN, STD, features=True), random_card(), MODEL_PATH)


def make_int8_model(force: bool = False) -> Path:
    """Quantize the FP32 benchmark model as ``training/quantize.py`` does, calibrated on the photos."""
    if INT8_MODEL_PATH.is_file() and not force and made_from(INT8_MODEL_PATH, MODEL_PATH):
        return INT8_MODEL_PATH
    import tempfile
    from dataclasses import replace

    import numpy as np

    from service.atomic_file import atomic_write_bytes
    from service.model_contract import read_model_metadata, write_metadata
    from service.preprocess import preprocess
    from training.quantize import QUANTIZATION, parent_card, quantized_graph

    prepare_images()
    meta = read_model_metadata(make_model())
    photos = load_images()
    rows = np.concatenate(
        [
            preprocess(data, resize_size=RESIZE_SIZE, crop_size=CROP_SIZE, crops=1, max_pixels=64_000_000)
            for _, data in photos
        ]
    )
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as scratch:
        graph = quantized_graph(MODEL_PATH, meta, rows, Path(scratch))
    method = QUANTIZATION["calibrate_method"].name
    calibration = {"source": "the benchmark photos", "images": len(photos), "method": method}
    card = replace(
        parent_card(meta),
        precision="int8",
        quantization={"parent": MODEL_PATH.name, "calibration": calibration, "accuracy": "random weights"},
    ).stamped()
    write_metadata(graph, card)
    return atomic_write_bytes(INT8_MODEL_PATH, graph.SerializeToString())


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="export again even if the files exist")
    args = parser.parse_args()
    print(make_model(args.force))
    print(make_int8_model(args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
