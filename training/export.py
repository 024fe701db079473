"""Export a trained ResNet to a self-describing ONNX model the service can serve as it is.

``python training/export.py CKPT [--int8]`` writes ``models/<arch>-<dataset>.onnx`` (and with ``--int8`` its
quantized sibling ``<arch>-<dataset>-int8.onnx``, calibrated on the run's training data: see
``training/quantize.py``): input ``image`` uint8
[N, H, W, 3] RGB, the normalisation inside the graph, output ``logits`` [N, classes], and the metadata of the
model contract, which ``service/model_contract.py`` declares and writes (``models/README.md`` documents it).
This module is the PyTorch half only. ONNX Runtime must agree with PyTorch (max |logit difference| <= 1e-4
and the same top-1) or nothing is published; publishing is atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from service.atomic_file import atomic_write_bytes
from service.model_contract import IMAGE_INPUT, LOGITS_OUTPUT, ModelCard, write_metadata
from training.checkpoint import load_checkpoint
from training.digest import sha256_file
from training.models import ARCHITECTURES, build_model
from training.quantize import QUANTIZE_ERRORS, add_arguments, quantize_from_arguments

log = logging.getLogger(__name__)

OPSET = 18  # at least the contract's MIN_OPSET
PARITY_TOLERANCE = 1e-4


class ExportError(Exception):
    """The exported graph does not reproduce the PyTorch model; nothing was published."""


class PixelInput(nn.Module):
    """Wraps a network so it takes what clients have: uint8 [N, H, W, 3] RGB pixels.

    ``mean``/``std`` are in pixel units and in the network's channel order; ``bgr`` reverses the channels
    first, for weights trained on BGR input (the original Caffe ResNets).
    """

    def __init__(self, network: nn.Module, mean: list[float], std: list[float], bgr: bool = False) -> None:
        super().__init__()
        self.network = network
        self.bgr = bgr
        self.mean: Tensor
        self.inv_std: Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 1, 3))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 1, 1, 3))

    def forward(self, image: Tensor) -> Tensor:
        x = image.float()
        if self.bgr:
            x = x.flip(-1)
        x = (x - self.mean) * self.inv_std
        return self.network(x.permute(0, 3, 1, 2))


def to_onnx(model: PixelInput, crop_size: int) -> onnx.ModelProto:
    """Trace ``model`` into an ONNX model with a dynamic batch dimension (in memory: a killed export
    leaves no scratch files behind)."""
    example = torch.zeros(2, crop_size, crop_size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[IMAGE_INPUT],
        output_names=[LOGITS_OUTPUT],
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes={IMAGE_INPUT: {0: batch}},
        external_data=False,
        verbose=False,
    )
    assert program is not None
    return program.model_proto


def check_parity(model: PixelInput, payload: bytes, crop_size: int, samples: np.ndarray | None) -> float:
    """Run ONNX Runtime and PyTorch on the same batch; raise ``ExportError`` unless they agree."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    batch = samples if samples is not None else rng.integers(0, 256, (8, crop_size, crop_size, 3), np.uint8)
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    onnx_logits = session.run([LOGITS_OUTPUT], {IMAGE_INPUT: batch})[0]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(batch)).numpy()
    difference = float(np.abs(onnx_logits - torch_logits).max())
    same_top1 = bool((onnx_logits.argmax(1) == torch_logits.argmax(1)).all())
    if difference > PARITY_TOLERANCE or not same_top1:
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch: max |logit difference| {difference:.3g} "
            f"(limit {PARITY_TOLERANCE}), same top-1: {same_top1}; nothing was published"
        )
    return difference


def export_model(model: PixelInput, card: ModelCard, target: Path, samples: np.ndarray | None = None) -> Path:
    """Export, check parity, attach ``card`` stamped with the export time, publish ``target`` atomically."""
    model.eval()
    proto = to_onnx(model, card.crop_size)
    onnx.checker.check_model(proto)
    write_metadata(proto, card.stamped())
    proto.doc_string = f"{card.arch} trained on {card.dataset}; contract: models/README.md"
    payload = proto.SerializeToString()
    difference = check_parity(model, payload, card.crop_size, samples)
    atomic_write_bytes(target, payload)
    log.info("published %s (ONNX Runtime vs PyTorch max |diff| %.2g)", target, difference)
    return target


def final_results(checkpoint: dict[str, Any]) -> dict[str, Any]:
    for record in reversed(checkpoint.get("history", [])):
        if "final" in record:
            return record["final"]
    return {}


def training_data(path: Path) -> Path:
    """The data directory the checkpoint at ``path`` was trained on: INT8 calibration comes from there."""
    return Path(load_checkpoint(path)["config"]["data"])


def export_checkpoint(path: Path, models_dir: Path = Path("models"), name: str | None = None) -> Path:
    """Export a ``train.py`` checkpoint to ``models_dir/<arch>-<dataset>.onnx`` (or ``<name>.onnx``)."""
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    classes = checkpoint["classes"]
    network = build_model(
        config["arch"], num_classes=len(classes), shortcut=config["shortcut"], stride_in=config["stride_in"]
    )
    network.load_state_dict(checkpoint["model"])
    # What the run computed. Older checkpoints kept mean, std and resize_size in the config and the final
    # errors in the history only.
    results = checkpoint.get("results") or {**config, **final_results(checkpoint)}
    crop = ARCHITECTURES[config["arch"]].input_size
    card = ModelCard(
        labels=classes,
        crop_size=crop,
        resize_size=int(results.get("resize_size") or crop),
        arch=config["arch"],
        dataset=config["dataset"],
        checkpoint_sha256=sha256_file(path),
        test_error_1crop=results.get("test_error_1crop"),
        test_error_10crop=results.get("test_error_10crop"),
    )
    model = PixelInput(network, results["mean"], results["std"])
    return export_model(model, card, models_dir / f"{name or config['arch'] + '-' + config['dataset']}.onnx")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python training/export.py", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by training/train.py")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where to publish the model")
    parser.add_argument("--name", help="model name (default: <arch>-<dataset>)")
    add_arguments(parser, int8_flag=True)
    args = parser.parse_args(argv)
    try:
        published = export_checkpoint(args.checkpoint, args.models_dir, args.name)
        print(published)
        if args.int8:
            print(quantize_from_arguments(published, args, training_data(args.checkpoint)))
    except (ExportError, *QUANTIZE_ERRORS) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
