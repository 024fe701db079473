"""Export a trained ResNet to a self-describing ONNX model the service can serve as it is.

``python training/export.py CKPT [--int8]`` writes ``models/<arch>-<dataset>.onnx`` (and with ``--int8`` its
quantized sibling ``<arch>-<dataset>-int8.onnx``, calibrated on the run's training data: see
``training/quantize.py``): input ``image`` uint8
[N, H, W, 3] RGB, the normalisation inside the graph, output ``logits`` [N, classes], and the metadata of the
model contract, which ``service/model_contract.py`` declares and writes (``models/README.md`` documents it).
By default (``--no-features`` leaves it out) a second output ``features`` holds the last block's feature map
[N, C, h, w], and the contract's ``cam`` metadata names it and the classifier's weight initializer: what the
service needs for class activation maps. It costs no measurable speed when only the logits are fetched
(``bench/README.md``). This module is the PyTorch half only. ONNX Runtime must agree with PyTorch (max
|logit difference| <= 1e-4, the features within 1e-4 of their largest value, the same top-1) or nothing is
published; publishing is atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from service.atomic_file import atomic_write_bytes
from service.model_contract import FEATURES_OUTPUT, IMAGE_INPUT, LOGITS_OUTPUT, ModelCard, write_metadata
from training.checkpoint import load_checkpoint
from training.digest import sha256_file
from training.models import ARCHITECTURES, ResNet, build_model
from training.quantize import QUANTIZE_ERRORS, add_arguments, quantize_from_arguments

log = logging.getLogger(__name__)

OPSET = 18  # at least the contract's MIN_OPSET
PARITY_TOLERANCE = 1e-4


class ExportError(Exception):
    """The exported graph does not reproduce the PyTorch model; nothing was published."""


class PixelInput(nn.Module):
    """Wraps a network so it takes what clients have: uint8 [N, H, W, 3] RGB pixels.

    ``mean``/``std`` are in pixel units and in the network's channel order; ``bgr`` reverses the channels
    first, for weights trained on BGR input (the original Caffe ResNets). ``features``: also return the last
    block's feature map (the network must be a :class:`~training.models.ResNet`), for class activation maps.
    """

    def __init__(
        self,
        network: nn.Module,
        mean: list[float],
        std: list[float],
        bgr: bool = False,
        features: bool = False,
    ) -> None:
        super().__init__()
        if features and not isinstance(network, ResNet):
            raise TypeError("features=True needs a training.models.ResNet (forward_features and head)")
        self.network = network
        self.bgr = bgr
        self.features = features
        self.mean: Tensor
        self.inv_std: Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 1, 3))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 1, 1, 3))

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = image.float()
        if self.bgr:
            x = x.flip(-1)
        x = ((x - self.mean) * self.inv_std).permute(0, 3, 1, 2)
        if not self.features:
            return self.network(x)
        assert isinstance(self.network, ResNet)
        features = self.network.forward_features(x)
        return self.network.head(features), features

    def outputs(self, image: Tensor) -> dict[str, np.ndarray]:
        """Output name -> value, as the exported graph names them."""
        with torch.no_grad():
            result = self(image)
        values = result if isinstance(result, tuple) else (result,)
        return {name: v.numpy() for name, v in zip(output_names(self), values, strict=True)}


def output_names(model: PixelInput) -> list[str]:
    return [LOGITS_OUTPUT, FEATURES_OUTPUT] if model.features else [LOGITS_OUTPUT]


def to_onnx(model: PixelInput, crop_size: int) -> onnx.ModelProto:
    """Trace ``model`` into an ONNX model with a dynamic batch dimension (in memory: a killed export
    leaves no scratch files behind)."""
    example = torch.zeros(2, crop_size, crop_size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=[IMAGE_INPUT],
        output_names=output_names(model),
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes={IMAGE_INPUT: {0: batch}},
        external_data=False,
        verbose=False,
    )
    assert program is not None
    return program.model_proto


def check_parity(model: PixelInput, payload: bytes, crop_size: int, samples: np.ndarray | None) -> float:
    """Run ONNX Runtime and PyTorch on the same batch; raise ``ExportError`` unless every output agrees."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    batch = samples if samples is not None else rng.integers(0, 256, (8, crop_size, crop_size, 3), np.uint8)
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    names = output_names(model)
    onnx_out = dict(zip(names, session.run(names, {IMAGE_INPUT: batch}), strict=True))
    torch_out = model.outputs(torch.from_numpy(batch))
    # Logits: absolute difference. Features (unbounded ReLU outputs, in the hundreds for a random network):
    # difference relative to the largest feature value, when that is above 1.
    difference = max(
        float(np.abs(onnx_out[n] - torch_out[n]).max())
        / (1.0 if n == LOGITS_OUTPUT else max(1.0, float(np.abs(torch_out[n]).max())))
        for n in names
    )
    same_top1 = bool((onnx_out[LOGITS_OUTPUT].argmax(1) == torch_out[LOGITS_OUTPUT].argmax(1)).all())
    if difference > PARITY_TOLERANCE or not same_top1:
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch: max |output difference| {difference:.3g} "
            f"(limit {PARITY_TOLERANCE}; features relative to their largest value), same top-1: "
            f"{same_top1}; nothing was published"
        )
    return difference


def classifier_initializer(proto: onnx.ModelProto, model: PixelInput) -> str:
    """The name of the graph initializer holding the classifier's weights ``[classes, channels]``.

    Found by value, whatever name the exporter gave it; ``ExportError`` when the graph keeps them in
    another form (then the file could not explain itself).
    """
    assert isinstance(model.network, ResNet)
    weights = model.network.fc.weight.detach().numpy()
    for init in proto.graph.initializer:
        if tuple(init.dims) == weights.shape and np.array_equal(onnx.numpy_helper.to_array(init), weights):
            return init.name
    raise ExportError("the exported graph holds no [classes, channels] initializer of the classifier weights")


def export_model(model: PixelInput, card: ModelCard, target: Path, samples: np.ndarray | None = None) -> Path:
    """Export, check parity, attach ``card`` stamped with the export time, publish ``target`` atomically.

    A model with ``features`` gets the contract's ``cam`` metadata: its feature output and weight initializer.
    """
    model.eval()
    proto = to_onnx(model, card.crop_size)
    if model.features:
        card = replace(
            card, cam={"features": FEATURES_OUTPUT, "weights": classifier_initializer(proto, model)}
        )
    onnx.checker.check_model(proto)
    write_metadata(proto, card.stamped())
    proto.doc_string = f"{card.arch} trained on {card.dataset}; contract: models/README.md"
    payload = proto.SerializeToString()
    difference = check_parity(model, payload, card.crop_size, samples)
    atomic_write_bytes(target, payload)
    log.info("published %s (ONNX Runtime vs PyTorch max |diff| %.2g)", target, difference)
    return target


def add_features_argument(parser: argparse.ArgumentParser) -> None:
    """``--features/--no-features``: the exporter's and the importer's switch for class activation maps."""
    parser.add_argument(
        "--features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the last block's feature map as a second output and the cam metadata, so the service "
        "can answer class activation maps (explain=true); it costs no measurable speed (default: on)",
    )


def final_results(checkpoint: dict[str, Any]) -> dict[str, Any]:
    for record in reversed(checkpoint.get("history", [])):
        if "final" in record:
            return record["final"]
    return {}


def training_data(path: Path) -> Path:
    """The data directory the checkpoint at ``path`` was trained on: INT8 calibration comes from there."""
    return Path(load_checkpoint(path)["config"]["data"])


def export_checkpoint(
    path: Path, models_dir: Path = Path("models"), name: str | None = None, features: bool = True
) -> Path:
    """Export a ``train.py`` checkpoint to ``models_dir/<arch>-<dataset>.onnx`` (or ``<name>.onnx``);
    ``features``: with the feature output and ``cam`` metadata (class activation maps)."""
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
    model = PixelInput(network, results["mean"], results["std"], features=features)
    return export_model(model, card, models_dir / f"{name or config['arch'] + '-' + config['dataset']}.onnx")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python training/export.py", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by training/train.py")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where to publish the model")
    parser.add_argument("--name", help="model name (default: <arch>-<dataset>)")
    add_features_argument(parser)
    add_arguments(parser, int8_flag=True)
    args = parser.parse_args(argv)
    try:
        published = export_checkpoint(args.checkpoint, args.models_dir, args.name, args.features)
        print(published)
        if args.int8:
            print(quantize_from_arguments(published, args, training_data(args.checkpoint)))
    except (ExportError, *QUANTIZE_ERRORS) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
