"""Helpers for the service tests: tiny ONNX models, images, settings, a live server, a gated session."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.app import create_app
from service.settings import Settings

COLORS = ("red", "green", "blue")
CROP, RESIZE = 8, 10


def colour_model(
    labels: Iterable[str] = COLORS,
    *,
    crop: int = CROP,
    resize: int = RESIZE,
    version: str = "20250101T000000Z",
    overrides: dict[str, str] | None = None,
    drop: Iterable[str] = (),
    scale: float = 10.0,
) -> onnx.ModelProto:
    """A contract-following model whose logit c is ``scale * mean(channel c) / 255``.

    With the default labels it predicts the dominant colour of the image: red, green or blue.
    Extra labels get a zero logit.
    """
    labels = list(labels)
    weights = np.zeros((3, len(labels)), dtype=np.float32)
    for c in range(min(3, len(labels))):
        weights[c, c] = scale / 255.0
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        ],
        "colour",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", crop, crop, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(labels)])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {
        "schema_version": "1",
        "labels": json.dumps(labels),
        "crop_size": str(crop),
        "resize_size": str(resize),
        "arch": "colour-test",
        "dataset": "synthetic",
        "test_error_1crop": "0.25",
        "test_error_10crop": "null",
        "created": "2025-01-01T00:00:00Z",
        "checkpoint_sha256": "0" * 64,
        "version": version,
    }
    props.update(overrides or {})
    for key in drop:
        props.pop(key, None)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def publish(path: Path, content: onnx.ModelProto | bytes) -> Path:
    """Write like the exporter: a temporary file in the same directory, fsync, rename over the target."""
    data = content if isinstance(content, bytes) else content.SerializeToString()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def image_bytes(
    color: tuple[int, ...] = (255, 0, 0),
    size: tuple[int, int] = (20, 16),
    fmt: str = "PNG",
    mode: str = "RGB",
    **save: Any,
) -> bytes:
    """An encoded image of one colour."""
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt, **save)
    return buffer.getvalue()


def declared_size_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's signature)."""
    data = bytearray(image_bytes(size=(4, 4)))
    ihdr = bytearray(data[12:29])  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    """Small, fast settings for tests: CPU only, no watcher unless asked, one ORT thread."""
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "providers": "cpu",
        "watch": False,
        "intra_op_threads": 1,
        "preprocess_threads": 2,
        "max_queue_delay_ms": 2,
        "watch_debounce_ms": 50,
    }
    values.update(overrides)
    return Settings(**values)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_ready(client: Any, names: Iterable[str] = ()) -> None:
    """Wait until ``/readyz`` answers 200 listing every name in ``names``."""

    def ready() -> bool:
        response = client.get("/readyz")
        return response.status_code == 200 and set(names) <= set(response.json()["models"])

    wait_until(ready, what=f"models {list(names)} ready")


@contextmanager
def running_client(settings: Settings, names: Iterable[str] = ("colours",)) -> Iterator[TestClient]:
    """A TestClient with the lifespan running and the given models ready."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client, names)
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """The app under a real uvicorn on 127.0.0.1, in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.app: FastAPI = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class GatedSession:
    """Wraps a real session; ``run`` blocks until the gate opens, so requests pile up in the queue."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.entered.set()
        self.gate.wait(timeout=30)
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds)


def gate_model(app: FastAPI, name: str) -> GatedSession:
    """Put a gate in front of the session of the version serving ``name``."""
    model = app.state.service.registry.resolve(name)
    gated = GatedSession(model.session)
    model.session = gated
    return gated


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in a Prometheus text page (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total
