"""Hostile input and overload: bounded memory per image, early 503 instead of a late 504, slow clients.

Behaviour only: how fast the service is under load is measured by ``bench/stress.py``, not here.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from contract_models import metric_value
from fastapi.testclient import TestClient
from pydantic import ValidationError
from svc_testkit import (
    LiveServer,
    gate_model,
    image_bytes,
    make_settings,
    running_client,
    wait_until,
)
from test_errors import PNG, assert_error, assert_serving

from service.allocator import MMAP_THRESHOLD_ENV, fix_mmap_threshold

# The colour model resizes to 10: a 1x5000 strip would become 10x50000 = 500,000 pixels.
STRIP = image_bytes(size=(1, 5000))


@pytest.fixture(scope="module")
def strict(models_dir: Path) -> Iterator[TestClient]:
    with running_client(make_settings(models_dir, max_resized_pixels=10_000)) as client:
        yield client


def test_a_thin_strip_is_refused_before_it_is_resized(strict: TestClient) -> None:
    body = assert_error(
        strict.post("/classify", content=STRIP, headers=PNG),
        413,
        "image_too_large",
        contains="after resizing",
    )
    assert "10000" in body["error"]["message"] and "1x5000" in body["error"]["message"]
    assert_serving(strict)


def test_the_bound_holds_for_every_route(strict: TestClient) -> None:
    files = [
        ("images", ("strip.png", STRIP, "image/png")),
        ("images", ("ok.png", image_bytes(), "image/png")),
    ]
    results = strict.post("/classify/batch", files=files).json()["results"]
    assert results[0]["error"]["code"] == "image_too_large" and results[1]["predictions"]

    encoded = base64.b64encode(STRIP).decode()
    as_bytes = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}]}
    response = strict.post("/v2/models/colours/infer", json=as_bytes)
    assert response.status_code == 413 and "after resizing" in response.json()["error"]

    pixels = np.zeros((1, 1, 5000, 3), dtype=np.uint8).reshape(-1).tolist()
    as_pixels = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 5000, 3], "data": pixels}]}
    response = strict.post("/v2/models/colours/infer", json=as_pixels)
    assert response.status_code == 413 and "after resizing" in response.json()["error"]
    assert_serving(strict)


def test_the_resized_limit_is_a_setting_that_must_fit_an_upload(tmp_path: Path) -> None:
    assert make_settings(tmp_path, max_resized_pixels=10_000).max_resized_pixels == 10_000
    with pytest.raises(ValidationError, match="max_upload_bytes_in_flight"):
        make_settings(tmp_path, max_upload_bytes=4096, max_upload_bytes_in_flight=1024)


@pytest.fixture
def slow_model(models_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(models_dir, request_timeout_s=10, retry_after_s=7)
    with running_client(settings) as client:
        yield client


def test_requests_that_cannot_finish_in_time_get_503_at_once(slow_model: TestClient) -> None:
    gate = gate_model(slow_model.app, "colours")  # type: ignore[arg-type]
    batcher = slow_model.app.state.service.registry.resolve("colours").batcher  # type: ignore[attr-defined]
    batcher.seconds_per_row = 0.25  # as if measured: a 10-crop image takes 2.5 s, the deadline is 10 s
    post = lambda: slow_model.post("/classify", content=image_bytes(), headers=PNG)  # noqa: E731
    with ThreadPoolExecutor(3) as pool:
        admitted = [pool.submit(post) for _ in range(3)]  # 2.5, 5 and 7.5 s of work: within 0.8 x 10 s
        deadline = time.monotonic() + 10
        while batcher.rows_ahead < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.rows_ahead == 30
        refused = post()  # 10 s of work: answered now, while the others still wait behind the gate
        assert not any(f.done() for f in admitted)
        body = assert_error(refused, 503, "overloaded", contains="cannot answer within 8 s")
        assert refused.headers["retry-after"] == "8"  # the 7.5 s the admitted work needs to drain, rounded up
        assert "retry after 8 s" in body["error"]["message"]
        gate.gate.set()
        assert [f.result().status_code for f in admitted] == [200, 200, 200]  # admitted keep their answer
    assert batcher.rows_ahead == 0
    assert_serving(slow_model)


def test_a_client_deadline_is_honoured_and_capped(slow_model: TestClient) -> None:
    gate = gate_model(slow_model.app, "colours")  # type: ignore[arg-type]
    batcher = slow_model.app.state.service.registry.resolve("colours").batcher  # type: ignore[attr-defined]
    batcher.seconds_per_row = 0.3
    post = lambda query: slow_model.post(f"/classify?{query}", content=image_bytes(), headers=PNG)  # noqa: E731
    with ThreadPoolExecutor(3) as pool:
        ahead = pool.submit(post, "crops=1")  # one row ahead, held by the gate
        wait_until(lambda: batcher.rows_ahead == 1, what="a request ahead")
        assert_error(post("timeout=2"), 503, "overloaded")  # 11 rows: 3.3 s against 0.8 x 2 s
        assert_error(post("timeout=0"), 422, "invalid_parameter")
        one_crop = pool.submit(post, "timeout=2&crops=1")  # 2 rows: 0.6 s
        wait_until(lambda: batcher.rows_ahead == 2, what="the one-crop request admitted")
        capped = pool.submit(post, "timeout=600")  # capped at the 10 s setting: 12 rows, 3.6 s fit 8 s
        wait_until(lambda: batcher.rows_ahead == 12, what="the capped request admitted")
        gate.gate.set()
        assert [f.result().status_code for f in (ahead, one_crop, capped)] == [200, 200, 200]
    assert batcher.rows_ahead == 0  # refused and bad requests give their reservation back


def test_an_idle_model_admits_whatever_its_estimate(slow_model: TestClient) -> None:
    batcher = slow_model.app.state.service.registry.resolve("colours").batcher  # type: ignore[attr-defined]
    batcher.seconds_per_row = 100.0  # stale: one slow batch long ago; refusing would never re-measure it
    assert slow_model.post("/classify", content=image_bytes(), headers=PNG).status_code == 200
    assert batcher.seconds_per_row < 100.0  # the answer measured the rate again


def test_a_bad_image_gives_its_reservation_back(slow_model: TestClient) -> None:
    batcher = slow_model.app.state.service.registry.resolve("colours").batcher  # type: ignore[attr-defined]
    for _ in range(5):
        assert slow_model.post("/classify", content=b"not an image", headers=PNG).status_code == 400
    assert batcher.rows_ahead == 0


def _recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _recv_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One response (head and Content-Length body) on a connection that may stay open."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@pytest.fixture(scope="module")
def guarded(models_dir: Path) -> Iterator[LiveServer]:
    settings = make_settings(
        models_dir,
        header_timeout_s=0.5,
        body_timeout_s=0.5,
        max_connections=6,
        max_upload_bytes=4096,
        max_upload_bytes_in_flight=6000,
        retry_after_s=4,
    )
    with LiveServer(settings) as server:
        yield server


HEAD = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"


def _closed(server: LiveServer, reason: str) -> float:
    """Connections the server closed for ``reason``, from its metrics."""
    page = httpx.get(server.url + "/metrics").text
    return metric_value(page, "resnet_serve_http_connections_closed_total", {"reason": reason})


def test_a_half_sent_header_is_closed_with_408(guarded: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
        assert _recv_all(sock).startswith(b"HTTP/1.1 408 ")
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:  # says nothing at all
        assert _recv_all(sock) == b""
    assert _closed(guarded, "header_timeout") >= 2
    with httpx.Client(base_url=guarded.url) as client:
        assert_serving(client)


def test_a_body_that_stops_arriving_is_closed(guarded: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(HEAD + b"Content-Length: 1000\r\n\r\nabc")
        assert _recv_all(sock) == b""
    assert _closed(guarded, "body_timeout") >= 1
    with httpx.Client(base_url=guarded.url) as client:
        assert_serving(client)


def test_connections_beyond_the_cap_get_503_with_retry_after(guarded: LiveServer) -> None:
    held = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(6)]
    try:
        with socket.create_connection(("127.0.0.1", guarded.port)) as extra:
            answer = _recv_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 4" in answer
        assert b"overloaded" in answer
    finally:
        for sock in held:
            sock.close()
    with httpx.Client(base_url=guarded.url) as client:
        assert_serving(client)


@pytest.fixture
def patient(models_dir: Path) -> Iterator[LiveServer]:
    """A server that waits long for a body: only an answer given without reading it comes in time."""
    with LiveServer(make_settings(models_dir, body_timeout_s=60)) as server:
        yield server


def test_a_refusal_is_answered_before_the_upload_is_read(patient: LiveServer) -> None:
    gate = gate_model(patient.app, "colours")
    batcher = patient.app.state.service.registry.resolve("colours").batcher
    measured = batcher.seconds_per_row
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(httpx.post, patient.url + "/classify?crops=1", content=image_bytes(), headers=PNG)
        try:
            wait_until(lambda: batcher.rows_ahead == 1, what="a request ahead")
            batcher.seconds_per_row = 100.0  # 10 more crops: 1100 s, far past 0.8 x 30 s
            with socket.create_connection(("127.0.0.1", patient.port)) as sock:
                sock.sendall(HEAD + b"Content-Length: 4000\r\n\r\n")  # the body never comes
                answer = _recv_response(sock)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"cannot answer within" in answer
            assert b"retry-after: " in answer  # the drain time of the work ahead
        finally:
            batcher.seconds_per_row = measured
            gate.gate.set()
        assert ahead.result().status_code == 200
    with httpx.Client(base_url=patient.url) as client:
        assert_serving(client)


def test_uploads_in_flight_share_one_memory_budget(guarded: LiveServer) -> None:
    head = HEAD + b"Content-Length: 4000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", guarded.port)) as slow:
        slow.sendall(head + b"x" * 10)  # holds 4000 of the 6000 bytes until it is answered or closed
        budget = guarded.app.state.service.upload_budget
        wait_until(lambda: budget.used == 4000, what="the slow upload's bytes held")
        with httpx.Client(base_url=guarded.url) as client:
            busy = client.post("/classify", content=image_bytes(size=(30, 30), fmt="BMP"), headers=PNG)
            assert_error(busy, 503, "overloaded", contains="upload memory budget")
            assert busy.headers["retry-after"] == "4"
    with httpx.Client(base_url=guarded.url) as client:  # the slow upload was closed: its bytes are back
        assert_serving(client)


def test_python_m_service_fixes_the_mmap_threshold_unless_the_environment_does() -> None:
    assert not fix_mmap_threshold({MMAP_THRESHOLD_ENV: "65536"})
    try:
        import ctypes

        ctypes.CDLL(None).mallopt  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc: no mallopt")
    assert fix_mmap_threshold({})
