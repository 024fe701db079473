"""Tiny ONNX models that follow the model contract (models/README.md), for tests that need a served model
without a trained ResNet, and the helpers to serve them: ``publish`` (an atomic write, as the exporter's),
``free_port`` and ``metric_value`` (one sample of a ``/metrics`` page), and ``write_colour_photos``, labelled
photos those models classify (an ImageFolder). Shared by the service, page,
deployment and training tests (``tests`` is on pytest's path).

Every model here computes ``logits = mean_rgb(image) @ weights``. ``colour_model`` answers the dominant
colour of a photo (a mostly-blue photo is labelled "blue"); ``cifar_like_model`` has the ten CIFAR-10 labels
and fixed pseudo-random weights: a stand-in with the shipped model's shape. ``colour_cam_model`` answers as
``colour_model`` through a ResNet's head (a feature map, global average pooling, one linear layer) and has
the feature output and ``cam`` metadata of an explainable model.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.atomic_file import atomic_write_bytes
from service.model_contract import ModelCard, metadata_props

COLORS = ("red", "green", "blue")
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def mean_rgb_model(
    labels: Iterable[str],
    weights: np.ndarray,
    *,
    crop: int,
    resize: int,
    arch: str,
    version: str = "20250101T000000Z",
    overrides: dict[str, str] | None = None,
    drop: Iterable[str] = (),
) -> onnx.ModelProto:
    """``logits = mean_rgb(image) @ weights`` (Cast -> ReduceMean over H, W -> MatMul) with contract metadata.

    The metadata is the contract's writer's (10-crop error not measured); ``overrides`` replaces values and
    ``drop`` removes keys, for tests of the service's refusals.
    """
    labels = list(labels)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (3, len(labels)):
        raise ValueError(f"weights must be [3, {len(labels)}], got {list(weights.shape)}")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            # opset 17: ReduceMean takes its axes as an attribute
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        ],
        arch,
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", crop, crop, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(labels)])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        labels=tuple(labels),
        crop_size=crop,
        resize_size=resize,
        arch=arch,
        dataset="synthetic",
        test_error_1crop=0.25,
        created="2025-01-01T00:00:00Z",
        checkpoint_sha256="0" * 64,
        version=version,
    )
    props = {**metadata_props(card), **(overrides or {})}
    for key in drop:
        props.pop(key, None)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def colour_model(
    labels: Iterable[str] = COLORS,
    *,
    crop: int = 8,
    resize: int = 10,
    scale: float = 10.0,
    version: str = "20250101T000000Z",
    overrides: dict[str, str] | None = None,
    drop: Iterable[str] = (),
) -> onnx.ModelProto:
    """Logit c is ``scale * mean(channel c) / 255``: with the default labels, the dominant colour.

    Extra labels get a zero logit.
    """
    labels = list(labels)
    weights = np.zeros((3, len(labels)), dtype=np.float32)
    for c in range(min(3, len(labels))):
        weights[c, c] = scale / 255.0
    return mean_rgb_model(
        labels,
        weights,
        crop=crop,
        resize=resize,
        arch="colour-test",
        version=version,
        overrides=overrides,
        drop=drop,
    )


def colour_cam_model(
    labels: Iterable[str] = COLORS,
    *,
    crop: int = 32,
    resize: int = 36,
    cell: int = 4,
    scale: float = 8.0,
    version: str = "20250101T000000Z",
) -> onnx.ModelProto:
    """``colour_model``'s logits through a ResNet-like head, with the feature output that maps use.

    ``features`` [N, 3, crop/cell, crop/cell] is the mean RGB (0-255) of each ``cell`` x ``cell`` block
    (AveragePool); ``logits = GlobalAveragePool(features) @ weights.T`` (Gemm, transB) with ``weights``
    [classes, 3] the initializer ``classifier.weight``: the map of a colour is bright where the photo has it.
    """
    labels = list(labels)
    weights = np.zeros((len(labels), 3), dtype=np.float32)
    for c in range(min(3, len(labels))):
        weights[c, c] = scale / 255.0
    grid = crop // cell
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["pixels"], ["planes"], perm=[0, 3, 1, 2]),
            helper.make_node(
                "AveragePool", ["planes"], ["features"], kernel_shape=[cell, cell], strides=[cell, cell]
            ),
            helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "classifier.weight"], ["logits"], transB=1),
        ],
        "colour-cam-test",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", crop, crop, 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(labels)]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3, grid, grid]),
        ],
        [numpy_helper.from_array(weights, "classifier.weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(
        labels=tuple(labels),
        crop_size=crop,
        resize_size=resize,
        arch="colour-cam-test",
        dataset="synthetic",
        cam={"features": "features", "weights": "classifier.weight"},
        created="2025-01-01T00:00:00Z",
        checkpoint_sha256="0" * 64,
        version=version,
    )
    helper.set_model_props(model, metadata_props(card))
    onnx.checker.check_model(model)
    return model


def cifar_like_model(crop: int = 32, resize: int = 36, seed: int = 0) -> onnx.ModelProto:
    """Ten CIFAR-10 labels, seeded random weights: the shipped model's interface at a fraction of its size."""
    weights = np.random.default_rng(seed).normal(0.0, 0.02, size=(3, len(CIFAR10_LABELS)))
    return mean_rgb_model(CIFAR10_LABELS, weights, crop=crop, resize=resize, arch="tiny-cifar")


def with_outputs(model: onnx.ModelProto, logits: str, first: str | None = None) -> onnx.ModelProto:
    """``model`` with its logits output named ``logits``; with ``first``, a softmax output listed first."""
    graph = model.graph
    for node in graph.node:
        renamed = [logits if name == graph.output[0].name else name for name in node.output]
        del node.output[:]
        node.output.extend(renamed)
    graph.output[0].name = logits
    if first is not None:
        graph.node.append(helper.make_node("Softmax", [logits], [first]))
        softmax = onnx.ValueInfoProto()
        softmax.CopyFrom(graph.output[0])
        softmax.name = first
        outputs = [softmax, *graph.output]
        del graph.output[:]
        graph.output.extend(outputs)
    onnx.checker.check_model(model)
    return model


def write_colour_photos(root: Path, split: str, per_class: int, low: int, high: int, seed: int) -> None:
    """``per_class`` PNGs per colour under ``root/split/<colour>``: every channel in [low, high), the
    class's own channel 100 brighter."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(COLORS):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(low, high, (12, 12, 3)).astype(np.int32)
            pixels[..., index] += 100
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


def publish(path: Path, content: onnx.ModelProto | bytes) -> Path:
    """Write as the exporter does (``service.atomic_file``): a temp file beside ``path``, fsync, rename."""
    return atomic_write_bytes(path, content if isinstance(content, bytes) else content.SerializeToString())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in a Prometheus text page, summed over matching label sets (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total
