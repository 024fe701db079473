"""Helpers for the service tests: images, settings, a live server, a gated session.

The tiny ONNX models they serve, and ``free_port``, are in ``tests/contract_models.py``.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from contract_models import free_port
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.server import server_config
from service.settings import Settings


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
        "grpc_port": 0,  # the gRPC tests give theirs a free port
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


class LiveServer:
    """The app under uvicorn on 127.0.0.1, as ``python -m service`` runs it, in a background thread.

    Entering it waits until the models in ``names`` are ready, as ``running_client`` does: models load
    after uvicorn starts, and a request sent before then is rightly answered 503 ``not_ready``.
    """

    def __init__(self, settings: Settings, names: Iterable[str] = ("colours",)) -> None:
        self.names = tuple(names)
        self.app: FastAPI = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        metrics = self.app.state.service.metrics
        config = server_config(
            self.app, settings, metrics, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn start")
        with httpx.Client(base_url=self.url) as http:
            wait_ready(http, self.names)
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

    def run(self, outputs: Any, feeds: dict[str, np.ndarray], run_options: Any = None) -> Any:
        self.entered.set()
        self.gate.wait(timeout=30)
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds, run_options)


def gate_model(app: FastAPI, name: str) -> GatedSession:
    """Put a gate in front of the session of the version serving ``name``."""
    model = app.state.service.registry.resolve(name)
    gated = GatedSession(model.session)
    model.session = gated
    return gated
