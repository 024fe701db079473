"""The model contract of ``models/README.md`` (schema version 1): declared, written and read here only.

A served model is an ONNX file that takes ``uint8 [N, H, W, 3]`` RGB pixels, gives float logits and
carries the fields of :class:`ModelCard` as ``metadata_props`` strings. The exporter and the importer
write them with :func:`write_metadata`; the service and the offline evaluator read and check them with
:func:`read_model_metadata`, which also picks the graph's image input and logits output, so that every
side agrees on every field. A model whose metadata is missing or inconsistent is refused, never served
with guessed preprocessing. Torch-free: the service imports it, and training depends on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, get_type_hints

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
MIN_OPSET = 17
UNVERSIONED = "unversioned"
IMAGE_INPUT = "image"  # the name the exporter gives the input (a reader takes the one input it finds)
LOGITS_OUTPUT = "logits"  # the output read when a graph has several
FEATURES_OUTPUT = "features"  # the exporter's name for the last block's output (class activation maps)
_INTERNAL = {"public": False}  # a field the reader keeps for the service, not shown by the API


class InvalidModelError(ValueError):
    """The file breaks the model contract; the message says which part and how."""


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """The contract's metadata: one field per ``metadata_props`` key, in the order the API shows them.

    The type of a field decides its encoding: ``labels``, the test errors and ``quantization`` are JSON (an
    unmeasured error is ``"null"``), the rest plain strings. The fields without a default, and
    ``schema_version``, are required. A quantized model is served like any other; ``precision`` and
    ``quantization`` (its FP32 parent, calibration, and both models' measured accuracy) say what it costs.
    ``cam`` (optional) names what a class activation map needs, both inside the file: the graph output
    holding the last block's feature map (``features``) and the initializer holding the classifier's
    weights (``weights``, ``[classes, channels]``); a model without it is served, unexplained.
    """

    version: str = UNVERSIONED
    arch: str | None = None
    dataset: str | None = None
    precision: str = "fp32"
    crop_size: int
    resize_size: int
    labels: tuple[str, ...]
    test_error_1crop: float | None = None
    test_error_10crop: float | None = None
    quantization: dict[str, Any] | None = field(default=None, hash=False)
    cam: dict[str, Any] | None = field(default=None, hash=False)
    created: str | None = None
    checkpoint_sha256: str | None = None
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))  # callers have lists; a card stays immutable

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def stamped(self, when: float | None = None) -> ModelCard:
        """This card with ``created`` and ``version`` set to the export time ``when`` (UTC; default now)."""
        moment = time.gmtime(when)
        return replace(
            self,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", moment),
            version=time.strftime("%Y%m%dT%H%M%SZ", moment),
        )


@dataclass(frozen=True, kw_only=True)
class ModelMetadata(ModelCard):
    """A card as read from a file, with what the reader learnt from the file's graph."""

    opset: int | None = None
    input_name: str = field(default=IMAGE_INPUT, metadata=_INTERNAL)
    output_name: str = field(default=LOGITS_OUTPUT, metadata=_INTERNAL)
    features_output: str | None = field(default=None, metadata=_INTERNAL)  # set when ``cam`` is
    properties: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, metadata=_INTERNAL)


_TYPES = get_type_hints(ModelMetadata)
_CARD = fields(ModelCard)
CONTRACT_KEYS = tuple(f.name for f in _CARD)
REQUIRED_KEYS = ("schema_version", *(f.name for f in _CARD if f.default is MISSING))


# ---------------------------------------------------------------- writing


def _encode(kind: Any, value: Any) -> str | None:
    """The ``metadata_props`` string of one field's value (None: the key is left out)."""
    if kind == tuple[str, ...]:
        return json.dumps(list(value))
    if kind == float | None:
        return json.dumps(value)
    if kind == dict[str, Any] | None:
        return None if value is None else json.dumps(value, sort_keys=True)
    return None if value is None else str(value)


def metadata_props(card: ModelCard) -> dict[str, str]:
    """``card`` as the ``metadata_props`` strings of the contract."""
    encoded = {f.name: _encode(_TYPES[f.name], getattr(card, f.name)) for f in _CARD}
    return {key: value for key, value in encoded.items() if value is not None}


def write_metadata(model: onnx.ModelProto, card: ModelCard) -> None:
    """Set the contract's ``metadata_props`` of ``model`` to ``card`` (keys outside the contract are kept)."""
    kept = {p.key: p.value for p in model.metadata_props if p.key not in CONTRACT_KEYS}
    onnx.helper.set_model_props(model, {**kept, **metadata_props(card)})


# ---------------------------------------------------------------- reading


def _positive_int(key: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidModelError(f"metadata {key}={raw!r} is not an integer") from None
    if value <= 0:
        raise InvalidModelError(f"metadata {key}={value} must be positive")
    return value


def _labels(key: str, raw: str) -> tuple[str, ...]:
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidModelError(f"metadata {key} is not a JSON array: {exc.msg}") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise InvalidModelError(f"metadata {key} must be a non-empty JSON array of strings")
    return tuple(labels)


def _test_error(key: str, raw: str) -> float | None:
    """A test error in [0, 1], or None for "null"; a malformed one is logged and ignored."""
    if raw.strip().lower() in ("null", "none"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        log.warning("ignoring metadata %s=%r: not a number in [0, 1] or null", key, raw)
        return None
    return value


def _json_object(key: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidModelError(f"metadata {key} is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InvalidModelError(f"metadata {key} must be a JSON object")
    return value


_READERS: dict[Any, Callable[[str, str], Any]] = {
    int: _positive_int,
    tuple[str, ...]: _labels,
    float | None: _test_error,
    dict[str, Any] | None: _json_object,
}


def _card_values(props: Mapping[str, str]) -> dict[str, Any]:
    """The card fields of ``metadata_props``, checked; an absent or empty optional key takes its default."""
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
    values: dict[str, Any] = {}
    for f in _CARD:
        raw = props.get(f.name)
        if raw is None or (not raw.strip() and f.name not in REQUIRED_KEYS):
            continue
        read = _READERS.get(_TYPES[f.name])
        values[f.name] = read(f.name, raw) if read else raw
    if values["resize_size"] < values["crop_size"]:
        raise InvalidModelError(
            f"resize_size {values['resize_size']} is smaller than crop_size {values['crop_size']}"
        )
    return values


def logits_output(names: Sequence[str]) -> str:
    """Which output holds the logits: the one named ``logits``, else the first."""
    return LOGITS_OUTPUT if LOGITS_OUTPUT in names else names[0]


def _static_dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _check_graph(model: onnx.ModelProto) -> tuple[str, str, int | None]:
    """(input, logits output, static class count) of a graph taking ``uint8 [N, H, W, 3]`` to float logits."""
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
    logits = outputs[logits_output(list(outputs))]
    if logits.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise InvalidModelError(f"output {logits.name!r} must be float32 logits [N, classes]")
    out_dims = _static_dims(logits)
    return image.name, logits.name, out_dims[-1] if len(out_dims) == 2 else None


def _check_cam(model: onnx.ModelProto, cam: Mapping[str, Any], num_classes: int, logits: str) -> str:
    """The features output ``cam`` names, after checking that it and the weights are in the graph."""
    features, weights = cam.get("features"), cam.get("weights")
    if not isinstance(features, str) or not isinstance(weights, str):
        raise InvalidModelError(
            'metadata cam must be {"features": <output name>, "weights": <initializer name>}'
        )
    outputs = {o.name: o for o in model.graph.output}
    if features not in outputs or features == logits:
        raise InvalidModelError(f"metadata cam names the output {features!r}, which is not a feature output")
    dims = _static_dims(outputs[features])
    if outputs[features].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise InvalidModelError(f"output {features!r} must be the float32 feature map [N, channels, h, w]")
    tensor = next((init for init in model.graph.initializer if init.name == weights), None)
    if tensor is None:
        raise InvalidModelError(
            f"metadata cam names the initializer {weights!r}, which the graph does not have"
        )
    shape = list(tensor.dims)
    if len(shape) != 2 or shape[0] != num_classes or dims[1] not in (None, shape[1]):
        raise InvalidModelError(
            f"cam weights {weights!r} are {shape}; they must be [classes, channels] = [{num_classes}, "
            f"{dims[1] if dims[1] is not None else 'channels'}]"
        )
    return features


def cam_weights(model: onnx.ModelProto, meta: ModelMetadata) -> np.ndarray | None:
    """The classifier's weights ``[classes, channels]`` (float32) that ``meta.cam`` names; None without it."""
    if meta.cam is None:
        return None
    name = meta.cam["weights"]
    tensor = next(init for init in model.graph.initializer if init.name == name)
    try:
        return np.ascontiguousarray(numpy_helper.to_array(tensor), dtype=np.float32)
    except Exception as exc:  # external data that was not loaded, an unreadable type
        raise InvalidModelError(f"cannot read the cam weights {name!r}: {exc}") from None


def _default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def metadata_from_model(model: onnx.ModelProto) -> ModelMetadata:
    """Contract metadata of an already parsed model, its graph's input and output included."""
    input_name, output_name, width = _check_graph(model)
    props = {p.key: p.value for p in model.metadata_props}
    values = _card_values(props)
    if width is not None and width != len(values["labels"]):
        raise InvalidModelError(
            f"{len(values['labels'])} labels but the model outputs {width} classes; refusing to guess"
        )
    opset = _default_opset(model)
    if opset is not None and opset < MIN_OPSET:
        log.warning("model opset %d is below the contract's %d; serving it anyway", opset, MIN_OPSET)
    cam = values.get("cam")
    features = None if cam is None else _check_cam(model, cam, len(values["labels"]), output_name)
    return ModelMetadata(
        **values,
        opset=opset,
        input_name=input_name,
        output_name=output_name,
        features_output=features,
        properties=props,
    )


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The parsed ONNX file at ``path``; :class:`InvalidModelError` when it is not one."""
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on garbage
        raise InvalidModelError(f"not a readable ONNX model: {exc}") from None


def read_model_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read and validate the contract metadata of the ONNX file at ``path``.

    Raises :class:`InvalidModelError` with a clear message when the file is not a model or breaks the
    contract (missing keys, bad labels, labels that do not match the output width, wrong input type).
    """
    return metadata_from_model(load_model(path))


# ---------------------------------------------------------------- the public view


_PUBLIC = [f.name for f in fields(ModelMetadata) if f.metadata.get("public", True)]


def _shown(name: str) -> str:
    return "num_labels" if name == "labels" else name  # the full list is in the detail view


def public_fields() -> dict[str, Any]:
    """Name -> type of each entry of :func:`describe`, in order (the API schema is built from it)."""
    return {_shown(name): int if name == "labels" else _TYPES[name] for name in _PUBLIC}


def describe(meta: ModelMetadata) -> dict[str, Any]:
    """The public (JSON) view of the metadata: the contract fields and the opset, labels as their count."""
    return {_shown(name): meta.num_classes if name == "labels" else getattr(meta, name) for name in _PUBLIC}
