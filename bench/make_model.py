"""Export a randomly initialised ResNet-50 through ``training/export.py`` for the benchmarks.

Writes ``bench/.work/models/resnet50-random.onnx`` (the served contract: uint8 [N, H, W, 3] RGB in,
``logits`` out, metadata attached, parity with PyTorch checked) and ``bench/.work/resnet50-random.pt``
(the same network's state dict, which the PyTorch eager baseline loads). Random weights: speed only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common import CROP_SIZE, MEAN, MODEL_PATH, RESIZE_SIZE, STATE_PATH, STD

if TYPE_CHECKING:  # torch is imported only when a network is built
    from training.models import ResNet


def build_network(seed: int = 0) -> ResNet:
    import torch

    from training.models import build_model

    torch.manual_seed(seed)
    network = build_model("resnet50")
    network.eval()
    return network


def make_model(force: bool = False) -> Path:
    if MODEL_PATH.is_file() and STATE_PATH.is_file() and not force:
        return MODEL_PATH
    import torch

    from service.model_contract import ModelCard
    from training.export import PixelInput, export_model

    network = build_network()
    STATE_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), STATE_PATH)
    card = ModelCard(
        labels=tuple(f"class{i}" for i in range(1000)),
        crop_size=CROP_SIZE,
        resize_size=RESIZE_SIZE,
        arch="resnet50",
        dataset="random",
        checkpoint_sha256="0" * 64,
    )
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    return export_model(PixelInput(network, MEAN, STD), card, MODEL_PATH)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="export again even if the files exist")
    args = parser.parse_args()
    print(make_model(args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
