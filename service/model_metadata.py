"""Read and check the model contract of ``models/README.md`` (schema version 1).

A model whose metadata is missing or inconsistent is refused, never served with guessed
preprocessing. The offline evaluator uses the same reader so that both agree on every field.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
REQUIRED_KEYS = ("schema_version", "labels", "crop_size", "resize_size")
MIN_OPSET = 17
UNVERSIONED = "unversioned"


class InvalidModelError(ValueError):
    """The file breaks the model contract; the message says which part and how."""


@dataclass(frozen=True)
class ModelMetadata:
    """The contract fields of one exported model."""

    labels: tuple[str, ...]
    crop_size: int
    resize_size: int
    version: str = UNVERSIONED
    arch: str | None = None
    dataset: str | None = None
    test_error_1crop: float | None = None
    test_error_10crop: float | None = None
    created: str | None = None
    checkpoint_sha256: str | None = None
    schema_version: str = SCHEMA_VERSION
    opset: int | None = None
    properties: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _positive_int(props: Mapping[str, str], key: str) -> int:
    try:
        value = int(props[key])
    except ValueError:
        raise InvalidModelError(f"metadata {key}={props[key]!r} is not an integer") from None
    if value <= 0:
        raise InvalidModelError(f"metadata {key}={value} must be positive")
    return value


def _labels(raw: str) -> tuple[str, ...]:
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidModelError(f"metadata labels is not a JSON array: {exc.msg}") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise InvalidModelError("metadata labels must be a non-empty JSON array of strings")
    return tuple(labels)


def _test_error(props: Mapping[str, str], key: str) -> float | None:
    """A test error in [0, 1], or None for "null"/absent; a malformed one is logged and ignored."""
    raw = props.get(key)
    if raw is None or raw.strip().lower() in ("", "null", "none"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        log.warning("ignoring metadata %s=%r: not a number in [0, 1] or null", key, raw)
        return None
    return value


def parse_metadata(
    props: Mapping[str, str], *, output_width: int | None = None, opset: int | None = None
) -> ModelMetadata:
    """Validate ``metadata_props`` (and the output width when known) into a :class:`ModelMetadata`."""
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise InvalidModelError(
            f"missing metadata {', '.join(missing)} (the model contract of models/README.md needs "
            f"{', '.join(REQUIRED_KEYS)})"
        )
    if props["schema_version"] != SCHEMA_VERSION:
        raise InvalidModelError(
            f"unsupported schema_version {props['schema_version']!r} (this service reads {SCHEMA_VERSION!r})"
        )
    labels = _labels(props["labels"])
    crop_size = _positive_int(props, "crop_size")
    resize_size = _positive_int(props, "resize_size")
    if resize_size < crop_size:
        raise InvalidModelError(f"resize_size {resize_size} is smaller than crop_size {crop_size}")
    if output_width is not None and output_width != len(labels):
        raise InvalidModelError(
            f"{len(labels)} labels but the model outputs {output_width} classes; refusing to guess"
        )
    if opset is not None and opset < MIN_OPSET:
        log.warning("model opset %d is below the contract's %d; serving it anyway", opset, MIN_OPSET)
    return ModelMetadata(
        labels=labels,
        crop_size=crop_size,
        resize_size=resize_size,
        version=props.get("version") or UNVERSIONED,
        arch=props.get("arch"),
        dataset=props.get("dataset"),
        test_error_1crop=_test_error(props, "test_error_1crop"),
        test_error_10crop=_test_error(props, "test_error_10crop"),
        created=props.get("created"),
        checkpoint_sha256=props.get("checkpoint_sha256"),
        schema_version=props["schema_version"],
        opset=opset,
        properties=dict(props),
    )


def _static_dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def check_graph_io(model: onnx.ModelProto) -> int | None:
    """Check the graph takes ``uint8 [N,H,W,3]`` and gives float logits; return the static class count."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidModelError(f"the graph needs exactly one input (image), it has {len(inputs)}")
    image = inputs[0]
    dims = _static_dims(image)
    if (
        image.type.tensor_type.elem_type != onnx.TensorProto.UINT8
        or len(dims) != 4
        or dims[3] not in (3, None)
    ):
        raise InvalidModelError(f"input {image.name!r} must be uint8 [N, H, W, 3] RGB pixels")
    if not model.graph.output:
        raise InvalidModelError("the graph has no output")
    outputs = {o.name: o for o in model.graph.output}
    logits = outputs.get("logits", model.graph.output[0])
    if logits.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise InvalidModelError(f"output {logits.name!r} must be float32 logits [N, classes]")
    out_dims = _static_dims(logits)
    return out_dims[-1] if len(out_dims) == 2 else None


def _default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def metadata_from_model(model: onnx.ModelProto) -> ModelMetadata:
    """Contract metadata of an already parsed model (graph I/O included)."""
    props = {p.key: p.value for p in model.metadata_props}
    return parse_metadata(props, output_width=check_graph_io(model), opset=_default_opset(model))


def read_model_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read and validate the contract metadata of the ONNX file at ``path``.

    Raises :class:`InvalidModelError` with a clear message when the file is not a model or breaks the
    contract (missing keys, bad labels, labels that do not match the output width, wrong input type).
    """
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise InvalidModelError(f"not a readable ONNX model: {exc}") from None
    return metadata_from_model(model)


def describe(meta: ModelMetadata) -> dict[str, Any]:
    """The public (JSON) view of the metadata, without the raw properties."""
    return {
        "version": meta.version,
        "arch": meta.arch,
        "dataset": meta.dataset,
        "crop_size": meta.crop_size,
        "resize_size": meta.resize_size,
        "num_labels": meta.num_classes,
        "test_error_1crop": meta.test_error_1crop,
        "test_error_10crop": meta.test_error_10crop,
        "created": meta.created,
        "checkpoint_sha256": meta.checkpoint_sha256,
        "schema_version": meta.schema_version,
        "opset": meta.opset,
    }
