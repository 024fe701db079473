"""Every error answer (status, code, headers, no stack trace), each followed by a successful request."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from contract_models import colour_model, publish
from fastapi.testclient import TestClient
from svc_testkit import (
    LiveServer,
    declared_size_png,
    gate_model,
    image_bytes,
    make_settings,
    running_client,
    wait_until,
)

from service.app import create_app

PNG = {"content-type": "image/png"}


def assert_error(response: httpx.Response, status: int, code: str, *, contains: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert contains.lower() in body["error"]["message"].lower(), body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def assert_serving(client: TestClient | httpx.Client, **headers: str) -> None:
    response = client.post("/classify", content=image_bytes((240, 10, 10)), headers=PNG | headers)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "red"


def _truncated_jpeg() -> bytes:
    return image_bytes((10, 200, 10), size=(64, 64), fmt="JPEG")[:-200]


@pytest.mark.parametrize(
    ("data", "contains"),
    [(b"", "empty"), (_truncated_jpeg(), "truncated"), (b"GIF89a-but-not-really", "")],
    ids=["empty", "truncated", "undecodable"],
)
def test_400_for_a_bad_image_says_why(client: TestClient, data: bytes, contains: str) -> None:
    assert_error(client.post("/classify", content=data, headers=PNG), 400, "invalid_image", contains=contains)
    files = {"image": ("x.jpg", data, "image/jpeg")}
    assert_error(client.post("/classify", files=files), 400, "invalid_image", contains=contains)
    assert_serving(client)


def test_413_for_too_many_pixels(client: TestClient) -> None:
    response = client.post("/classify", content=declared_size_png(20_000, 20_000), headers=PNG)
    assert_error(response, 413, "image_too_large", contains="pixels")
    assert_serving(client)


@pytest.mark.parametrize(
    ("kwargs", "contains"),
    [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, "text/plain"),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, "application/json"),
        ({"files": {"image": ("notes.txt", b"hello", "text/plain")}}, "text/plain"),
    ],
    ids=["text", "json", "multipart-part"],
)
def test_415_for_a_non_image_content_type(client: TestClient, kwargs: dict, contains: str) -> None:
    assert_error(client.post("/classify", **kwargs), 415, "unsupported_media_type", contains=contains)
    assert_serving(client)


@pytest.mark.parametrize(
    ("url", "contains"),
    [
        ("/classify?crops=3", "crops"),
        ("/classify?top_k=0", "top_k"),
        ("/classify?top_k=many", "top_k"),
    ],
)
def test_422_for_bad_parameters(client: TestClient, url: str, contains: str) -> None:
    assert_error(
        client.post(url, content=image_bytes(), headers=PNG), 422, "invalid_parameter", contains=contains
    )
    assert_serving(client)


def test_422_for_a_multipart_request_without_the_image_field(client: TestClient) -> None:
    response = client.post("/classify", files={"picture": ("a.png", image_bytes(), "image/png")})
    assert_error(response, 422, "invalid_parameter", contains="'image'")
    assert_serving(client)


def test_404_for_an_unknown_model_or_route(client: TestClient) -> None:
    response = client.post("/classify?model=resnet9000", content=image_bytes(), headers=PNG)
    assert_error(response, 404, "model_not_found", contains="resnet9000")
    assert_error(client.get("/models/resnet9000"), 404, "model_not_found")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_serving(client)


def test_413_above_the_upload_limit_declared_in_content_length(models_dir: Path) -> None:
    with running_client(make_settings(models_dir, max_upload_bytes=3000)) as client:
        big = image_bytes(size=(300, 300), fmt="BMP")
        assert_error(
            client.post("/classify", content=big, headers=PNG), 413, "payload_too_large", contains="3000"
        )
        files = {"image": ("big.bmp", big, "image/bmp")}
        assert_error(client.post("/classify", files=files), 413, "payload_too_large")
        batch = [("images", ("a.bmp", big, "image/bmp"))] * 2
        assert_error(client.post("/classify/batch", files=batch), 413, "payload_too_large")
        assert_serving(client)


def _status_after_streaming(port: int, chunks: int, chunk_size: int) -> tuple[int, int]:
    """Send a chunked body (no Content-Length) one chunk at a time; return (status, chunks sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        for _ in range(chunks):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (chunk_size, b"\x89" * chunk_size))
            except OSError:  # the server answered and closed: it stopped reading
                break
            sent += 1
            sock.settimeout(0.3)
            try:
                head = sock.recv(64)
            except TimeoutError:
                continue
            return int(head.split()[1]), sent
        sock.settimeout(10)
        return int(sock.recv(64).split()[1]), sent


def test_413_is_enforced_while_the_body_streams_in(models_dir: Path) -> None:
    with LiveServer(make_settings(models_dir, max_upload_bytes=4096)) as server:
        status, sent = _status_after_streaming(server.port, chunks=40, chunk_size=1024)
        assert status == 413
        assert sent < 40  # answered before the client could send the whole body
        with httpx.Client(base_url=server.url) as http:
            assert_serving(http)


def test_503_with_retry_after_until_a_model_is_ready(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin_token="sesame", retry_after_s=7)
    with TestClient(create_app(settings)) as client:
        for response in (client.get("/readyz"), client.post("/classify", content=image_bytes(), headers=PNG)):
            assert_error(response, 503, "not_ready")
            assert response.headers["retry-after"] == "7"
        publish(tmp_path / "colours.onnx", colour_model())
        reload = client.post("/admin/reload", headers={"Authorization": "Bearer sesame"})
        assert reload.status_code == 200 and reload.json()["loaded"] == ["colours"]
        assert client.get("/readyz").status_code == 200
        assert_serving(client)


@pytest.fixture
def gated_client(models_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(models_dir, max_queue_size=1, request_timeout_s=1.5, retry_after_s=2)
    with running_client(settings) as client:
        yield client


def test_503_overloaded_when_the_queue_is_full(gated_client: TestClient) -> None:
    gate = gate_model(gated_client.app, "colours")  # type: ignore[arg-type]
    post = lambda: gated_client.post("/classify?crops=1", content=image_bytes(), headers=PNG)  # noqa: E731
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post)
        assert gate.entered.wait(10)  # one batch is in the session
        queued = pool.submit(post)
        service = gated_client.app.state.service  # type: ignore[attr-defined]
        wait_until(lambda: service.registry.resolve("colours").batcher.depth == 1, what="a queued request")
        overloaded = post()
        assert_error(overloaded, 503, "overloaded", contains="queue")
        assert overloaded.headers["retry-after"] == "2"
        gate.gate.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert_serving(gated_client)


def test_503_overloaded_when_too_many_images_wait_for_decoding(models_dir: Path) -> None:
    settings = make_settings(models_dir, max_queue_size=1, preprocess_threads=1)
    with running_client(settings) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        release = threading.Event()
        service.preprocess_pool.submit(release.wait, 30)  # the only decode thread is busy
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.post, "/classify", content=image_bytes(), headers=PNG)
            wait_until(lambda: service.classifier.decoding == 1, what="an image waiting for the decoder")
            overloaded = client.post("/classify", content=image_bytes(), headers=PNG)
            assert_error(overloaded, 503, "overloaded", contains="decoded")
            assert "retry-after" in overloaded.headers
            release.set()
            assert waiting.result().status_code == 200
        assert_serving(client)


def test_504_when_a_request_outlives_its_timeout(gated_client: TestClient) -> None:
    gate = gate_model(gated_client.app, "colours")  # type: ignore[arg-type]
    response = gated_client.post("/classify", content=image_bytes(), headers=PNG)
    assert_error(response, 504, "timeout")
    gate.gate.set()
    assert_serving(gated_client)


def test_500_without_details_when_inference_fails(client: TestClient) -> None:
    model = client.app.state.service.registry.resolve("colours")  # type: ignore[attr-defined]
    real = model.session

    class Broken:
        def run(self, *args: object) -> None:
            raise RuntimeError("secret internals /opt/model/path")

    model.session = Broken()
    try:
        body = assert_error(
            client.post("/classify", content=image_bytes(), headers=PNG), 500, "inference_failed"
        )
        assert "secret" not in str(body)
    finally:
        model.session = real
    assert_serving(client)


def test_bearer_token_guards_classification_only(models_dir: Path) -> None:
    with running_client(make_settings(models_dir, auth_token="s3cret")) as client:
        response = client.post("/classify", content=image_bytes(), headers=PNG)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = client.post(
            "/classify", content=image_bytes(), headers=PNG | {"Authorization": "Bearer nope"}
        )
        assert_error(wrong, 401, "unauthorized", contains="wrong")
        assert client.post("/v2/models/colours/infer", json={"inputs": []}).status_code == 401
        assert client.get("/models").status_code == 200 and client.get("/healthz").status_code == 200
        assert_serving(client, Authorization="Bearer s3cret")


def test_admin_endpoints_need_their_own_token(models_dir: Path) -> None:
    with running_client(make_settings(models_dir)) as client:
        assert_error(client.post("/admin/reload"), 403, "forbidden", contains="SERVE_ADMIN_TOKEN")
        assert_serving(client)
    with running_client(make_settings(models_dir, admin_token="adm", auth_token="cls")) as client:
        assert_error(
            client.post("/admin/reload", headers={"Authorization": "Bearer cls"}), 401, "unauthorized"
        )
        response = client.post("/admin/reload", headers={"Authorization": "Bearer adm"})
        assert response.status_code == 200 and response.json()["unchanged"] == ["colours"]
        assert_serving(client, Authorization="Bearer cls")


def test_cors_allows_the_configured_origin(models_dir: Path) -> None:
    with running_client(make_settings(models_dir, cors_origins="https://app.example")) as client:
        preflight = client.options(
            "/classify",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_service_keeps_serving_after_a_burst_of_errors(client: TestClient) -> None:
    bad = [b"", b"junk", _truncated_jpeg(), declared_size_png(30_000, 30_000)]
    statuses = {client.post("/classify", content=bad[i % 4], headers=PNG).status_code for i in range(24)}
    assert statuses == {400, 413}
    with ThreadPoolExecutor(4) as pool:
        for result in [pool.submit(assert_serving, client) for _ in range(8)]:
            result.result()
