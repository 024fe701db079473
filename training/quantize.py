"""Quantize a served FP32 model to INT8, measure what it costs, and publish it only when the cost is small.

``python training/quantize.py models/resnet20-cifar10.onnx --calibration data/cifar10`` writes
``models/resnet20-cifar10-int8.onnx`` beside its parent. ONNX Runtime's static quantization (QDQ format, int8
weights per output channel in 7 bits, uint8 activations, MinMax ranges) runs on calibration images that go
through the service's own preprocessing (one centre crop), taken from the training split (never the test
split), spread over the classes. (7-bit weights: AVX2 CPUs without VNNI saturate on full 8-bit ones.)
Both models are then evaluated as the service serves them (``training/evaluate.py``), 1 and 10 crops, on a
labelled set disjoint from the calibration (the test split by default). When the INT8 top-1 error exceeds
the parent's by more than ``--max-error-increase`` on either, nothing is published and the figures say why.
Otherwise the model is published atomically, with the same contract as its parent plus ``precision`` and
``quantization`` (calibration, both models' errors, top-1 agreement): the service serves it with no special
case. Torch-free: it needs only the ONNX file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from service.atomic_file import atomic_write_bytes
from service.defaults import DEFAULT_MAX_IMAGE_PIXELS
from service.model_contract import (
    InvalidModelError,
    ModelCard,
    ModelMetadata,
    metadata_from_model,
    read_model_metadata,
    write_metadata,
)
from service.preprocess import CROP_COUNTS, preprocess
from training.data import IMAGE_EXTENSIONS, DataError, scan_split, split_dir
from training.digest import sha256_file
from training.evaluate import (
    Dataset,
    Predictions,
    load_dataset,
    open_session,
    predict,
    split_root,
    spread_limit,
)

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 128
DEFAULT_MAX_ERROR_INCREASE = 0.01  # one point of top-1 error, 1 or 10 crops
DEFAULT_AGREEMENT_IMAGES = 1000
CALIBRATION_BATCH = 16
EVAL_BATCH = 64  # most crops in one session run while measuring


class QuantizationError(Exception):
    """The INT8 model was not published; the message says why."""


def int8_path(fp32: Path) -> Path:
    """Where the INT8 model of ``fp32`` is published: ``<name>-int8.onnx`` beside it."""
    return fp32.with_name(f"{fp32.stem}-int8.onnx")


# The quantize_static options of every published INT8 model.
QUANTIZATION: dict[str, Any] = {
    "quant_format": QuantFormat.QDQ,
    "per_channel": True,
    "reduce_range": True,
    "activation_type": QuantType.QUInt8,
    "weight_type": QuantType.QInt8,
    "calibrate_method": CalibrationMethod.MinMax,
}


# ---------------------------------------------------------------- calibration


def calibration_split(data: Path) -> Path:
    """The training split under ``data`` (``data/train``), or ``data`` itself when it is one.

    The test split is refused: the errors published with the model are measured on it.
    """
    if data.name in ("test", "val"):
        raise DataError(f"{data} is a test split: calibration images come from the training data")
    return split_root(data, "train")


def calibration_rows(meta: ModelMetadata, data: Path, count: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``count`` images of the training split spread over its classes, as the service's centre crops."""
    split = calibration_split(data)
    files = scan_split(split.parent, split.name)
    indices = spread_limit(files.labels, count)
    chosen = [files.paths[i] for i in indices]
    rows = [
        preprocess(
            path.read_bytes(),
            resize_size=meta.resize_size,
            crop_size=meta.crop_size,
            crops=1,
            max_pixels=DEFAULT_MAX_IMAGE_PIXELS,
        )
        for path in chosen
    ]
    source = {
        "source": str(split),
        "images": len(rows),
        "classes": len({files.labels[i] for i in indices}),
        "preprocessing": "the service's centre crop (1-crop)",
        "method": QUANTIZATION["calibrate_method"].name,
    }
    return np.concatenate(rows), source


class CalibrationBatches(CalibrationDataReader):
    """Feeds the calibration rows to ONNX Runtime's calibrator a few at a time."""

    def __init__(self, input_name: str, rows: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = iter(np.array_split(rows, -(-len(rows) // CALIBRATION_BATCH)))
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def quantized_graph(
    fp32: Path, meta: ModelMetadata, rows: np.ndarray, scratch: Path, **overrides: Any
) -> onnx.ModelProto:
    """The INT8 graph of ``fp32``, calibrated on ``rows`` (scratch files go to ``scratch``).

    ``overrides``: quantize_static options other than :data:`QUANTIZATION` (``bench/int8_formats.py``).
    """
    prepared, quantized = scratch / "prepared.onnx", scratch / "int8.onnx"
    try:
        quant_pre_process(str(fp32), str(prepared))
    except AssertionError:
        # onnxruntime 1.30's symbolic shape inference asserts on the preprocessing's Range node (1.31 does
        # not). Without it the quantized nodes and weights are the same; only shape annotations are fewer.
        log.info("symbolic shape inference failed on %s; quantizing with ONNX shape inference only", fp32)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(quantized),
        CalibrationBatches(meta.input_name, rows),
        **{**QUANTIZATION, **overrides},
    )
    return onnx.load(str(quantized))


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """Top-1 error of one model on the evaluation set, per crop count, and its top-1 classes."""

    errors: dict[int, float]
    top1: dict[int, np.ndarray]


@dataclass(frozen=True)
class Served:
    """One model's session, opened once for every measurement, answering as the service answers."""

    meta: ModelMetadata
    session: Any

    @classmethod
    def open(cls, model: Path, meta: ModelMetadata) -> Served:
        return cls(meta, open_session(model, meta, ["cpu"], batch_size=EVAL_BATCH, crops=max(CROP_COUNTS)))

    def top1(self, paths: list[Path], crops: int) -> np.ndarray:
        """The class the model answers for each file with ``crops`` crops."""
        found: Predictions = predict(self.session, self.meta, paths, crops, batch_size=EVAL_BATCH, threads=2)
        if len(found.kept) != len(paths):
            raise DataError(f"{len(found.skipped)} images did not decode: {'; '.join(found.skipped[:3])}")
        classes: np.ndarray = found.probabilities.argmax(axis=1)
        return classes

    def measure(self, dataset: Dataset) -> Measured:
        """Top-1 error on ``dataset``, 1 and 10 crops."""
        top1 = {crops: self.top1(dataset.paths, crops) for crops in CROP_COUNTS}
        return Measured({c: float(np.mean(top1[c] != dataset.targets)) for c in CROP_COUNTS}, top1)


def photos(directory: Path, count: int) -> list[Path]:
    """``count`` image files under ``directory`` (any layout), evenly spaced in name order."""
    found = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise DataError(f"no image files under {directory}")
    step = max(1, len(found) // count)
    return found[::step][:count]


def parent_card(meta: ModelMetadata) -> ModelCard:
    """The parent's card for its INT8 twin: without ``cam``, since the quantizer rewrites the classifier's
    weight initializer (the twin is served unexplained)."""
    return replace(ModelCard(**{f.name: getattr(meta, f.name) for f in fields(ModelCard)}), cam=None)


# ---------------------------------------------------------------- the command


def quantize_model(
    fp32: Path,
    calibration: Path,
    evaluation: Path | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_error_increase: float = DEFAULT_MAX_ERROR_INCREASE,
    target: Path | None = None,
    limit: int | None = None,
    agreement: Path | None = None,
    agreement_images: int = DEFAULT_AGREEMENT_IMAGES,
) -> Path:
    """Quantize, measure, and publish ``target`` (default ``<name>-int8.onnx``) when the cost is in bounds.

    ``evaluation``: a labelled ImageFolder (its test split when it has one; default: the test split beside the
    calibration's training split); ``limit``: evaluate at most that many of its images. ``agreement``: photos
    (any layout, disjoint from the calibration) on which the two models' top-1 agreement is measured; default:
    the evaluation set.
    """
    meta = read_model_metadata(fp32)
    if meta.precision != "fp32":
        raise QuantizationError(f"{fp32} is already {meta.precision}; quantize its FP32 parent")
    if calibration_images < 1:
        raise QuantizationError("--calibration-images must be at least 1")
    if evaluation is None:
        evaluation = split_dir(calibration, "test")  # beside the training split; a clear error when absent
    try:
        on_test_split = split_root(evaluation).resolve() == split_dir(calibration, "test").resolve()
    except DataError:  # the calibration data has no test split
        on_test_split = False
    if evaluation.resolve() == calibration_split(calibration).resolve():
        raise DataError(f"{evaluation} holds the calibration images: evaluate on a disjoint set")
    target = target or int8_path(fp32)
    rows, calibrated = calibration_rows(meta, calibration, calibration_images)
    log.info("calibrating on %d images of %s", len(rows), calibrated["source"])
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        graph = quantized_graph(fp32, meta, rows, Path(scratch))
        draft = replace(parent_card(meta), precision="int8")
        write_metadata(graph, draft)
        candidate = Path(scratch) / target.name
        onnx.save(graph, str(candidate))
        # The contract holds before anything is measured.
        parent_model, int8_model = Served.open(fp32, meta), Served.open(candidate, metadata_from_model(graph))
        log.info("evaluating the FP32 parent and the INT8 model on %s, 1 and 10 crops", evaluation)
        dataset = load_dataset(evaluation, meta.labels, limit)
        parent, int8 = parent_model.measure(dataset), int8_model.measure(dataset)
        increase = {c: int8.errors[c] - parent.errors[c] for c in CROP_COUNTS}
        summary = ", ".join(
            f"{c}-crop {100 * int8.errors[c]:.2f}% vs {100 * parent.errors[c]:.2f}%" for c in CROP_COUNTS
        )
        if max(increase.values()) > max_error_increase:
            raise QuantizationError(
                f"INT8 top-1 error exceeds the FP32 parent's by more than {100 * max_error_increase:.2f} "
                f"points on {len(dataset.paths)} images of {dataset.directory} ({summary}); "
                f"{target} was not published"
            )
        agreed = {"data": str(dataset.directory), "images": len(dataset.paths)}
        same = int8.top1[10] == parent.top1[10]
        if agreement is not None:
            chosen = photos(agreement, agreement_images)
            log.info("top-1 agreement of the two models on %d photos of %s", len(chosen), agreement)
            same = int8_model.top1(chosen, 10) == parent_model.top1(chosen, 10)
            agreed = {"data": str(agreement), "images": len(chosen)}
        measured = {
            "int8_error_1crop": int8.errors[1],
            "int8_error_10crop": int8.errors[10],
            "parent_error_1crop": parent.errors[1],
            "parent_error_10crop": parent.errors[10],
        }
        # The contract's test errors are the test split's: set only when that is what was measured.
        tested = (int8.errors[1], int8.errors[10]) if on_test_split else (None, None)
        card = replace(
            draft,
            test_error_1crop=tested[0],
            test_error_10crop=tested[1],
            quantization={
                "parent": fp32.name,
                "parent_sha256": sha256_file(fp32),
                "evaluated_on": {"data": str(dataset.directory), "images": len(dataset.paths), **measured},
                "top1_agreement_10crop": {**agreed, "rate": float(np.mean(same))},
                "max_error_increase": max_error_increase,
                "calibration": calibrated,
                "format": "QDQ: 7-bit int8 weights per output channel, uint8 activations",
                "onnxruntime": onnxruntime.__version__,
            },
        ).stamped()
        write_metadata(graph, card)
        atomic_write_bytes(target, graph.SerializeToString())
    log.info("published %s (%s)", target, summary)
    return target


def add_arguments(parser: argparse.ArgumentParser, int8_flag: bool = False) -> None:
    """The quantization options, shared by this command, the exporter, the trainer and the importer.

    ``int8_flag``: add ``--int8``, for the commands that publish an FP32 model first and INT8 on request.
    """
    group = parser.add_argument_group("INT8 quantization (training/quantize.py)")
    if int8_flag:
        group.add_argument(
            "--int8", action="store_true", help="also publish <name>-int8.onnx beside the FP32 model"
        )
    group.add_argument(
        "--calibration",
        type=Path,
        help="ImageFolder of training images (its train split when it has one); never the test split",
    )
    group.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="calibration images, spread over the classes (default: %(default)s)",
    )
    group.add_argument(
        "--evaluation",
        type=Path,
        help="labelled ImageFolder the error check runs on (default: the test split beside --calibration)",
    )
    group.add_argument(
        "--agreement",
        type=Path,
        help="photos (any layout, not the calibration's) to measure the two models' top-1 agreement on "
        "(default: the evaluation set)",
    )
    group.add_argument(
        "--agreement-images",
        type=int,
        default=DEFAULT_AGREEMENT_IMAGES,
        help="at most this many --agreement photos (default: %(default)s)",
    )
    group.add_argument(
        "--max-error-increase",
        type=float,
        default=DEFAULT_MAX_ERROR_INCREASE,
        help="refuse to publish when INT8 top-1 error exceeds the FP32 one by more (default: %(default)s)",
    )


def quantize_from_arguments(fp32: Path, args: argparse.Namespace, training_data: Path | None = None) -> Path:
    """Quantize ``fp32`` with the options of :func:`add_arguments`; ``training_data``: default calibration."""
    calibration = args.calibration or training_data
    if calibration is None:
        raise QuantizationError("INT8 needs --calibration DIR: an ImageFolder of training images")
    return quantize_model(
        fp32,
        calibration,
        args.evaluation,
        args.calibration_images,
        args.max_error_increase,
        agreement=args.agreement,
        agreement_images=args.agreement_images,
    )


QUANTIZE_ERRORS = (QuantizationError, DataError, InvalidModelError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python training/quantize.py", description=__doc__)
    parser.add_argument("model", type=Path, help="an FP32 ONNX model following models/README.md")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        print(quantize_from_arguments(args.model, args))
    except QUANTIZE_ERRORS as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
