"""Tiny ONNX models that follow the model contract (models/README.md), for tests that need a served model
without the trained ResNet.

``colour_model`` answers the dominant colour of a photo: its logits are the mean red, green and blue
values, so a mostly-blue photo is labelled "blue". ``cifar_like_model`` has the ten CIFAR-10 labels and
fixed pseudo-random weights: a stand-in with the shipped model's shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write(path: Path, labels: list[str], weight: np.ndarray, crop: int, resize: int, arch: str) -> Path:
    """logits = mean_rgb(image) @ weight: Cast -> ReduceMean over H, W -> MatMul."""
    weight = np.asarray(weight, dtype=np.float32)
    assert weight.shape == (3, len(labels))
    w = numpy_helper.from_array(weight, "w")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            # opset 17: ReduceMean takes its axes as an attribute
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        ],
        arch,
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", crop, crop, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(labels)])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "schema_version": "1",
        "labels": json.dumps(labels),
        "crop_size": str(crop),
        "resize_size": str(resize),
        "arch": arch,
        "dataset": "synthetic",
        "test_error_1crop": "null",
        "test_error_10crop": "null",
        "created": "2020-01-01T00:00:00Z",
        "checkpoint_sha256": "0" * 64,
        "version": "20200101T000000Z",
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)  # published atomically, as the exporter does
    return path


def colour_model(path: Path, crop: int = 32, resize: int = 36) -> Path:
    return _write(path, ["red", "green", "blue"], np.eye(3) * (8.0 / 255.0), crop, resize, "colour-mean")


def cifar_like_model(path: Path, crop: int = 32, resize: int = 36, seed: int = 0) -> Path:
    weight = np.random.default_rng(seed).normal(0.0, 0.02, size=(3, len(CIFAR10_LABELS)))
    return _write(path, CIFAR10_LABELS, weight, crop, resize, "tiny-cifar")
