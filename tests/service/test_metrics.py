"""The Prometheus page: it parses, names follow conventions, and batching is visible in it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from contract_models import metric_value
from prometheus_client.parser import text_string_to_metric_families
from svc_testkit import gate_model, image_bytes, make_settings, running_client, wait_until

PNG = {"content-type": "image/png"}
MODEL = {"model": "colours"}


def test_metrics_page_parses_and_covers_the_service(models_dir: Path) -> None:
    with running_client(make_settings(models_dir)) as client:
        assert client.post("/classify", content=image_bytes((250, 0, 0)), headers=PNG).status_code == 200
        assert client.post("/classify", content=b"junk", headers=PNG).status_code == 400
        response = client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        text = response.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "resnet_serve_http_requests": "counter",
        "resnet_serve_http_request_duration_seconds": "histogram",
        "resnet_serve_http_requests_in_flight": "gauge",
        "resnet_serve_preprocess_duration_seconds": "histogram",
        "resnet_serve_queue_duration_seconds": "histogram",
        "resnet_serve_inference_duration_seconds": "histogram",
        "resnet_serve_batch_size_rows": "histogram",
        "resnet_serve_batch_size_requests": "histogram",
        "resnet_serve_queue_depth": "gauge",
        "resnet_serve_model_loads": "counter",
        "resnet_serve_model_load_failures": "counter",
        "resnet_serve_model_info": "gauge",
        "resnet_serve_predictions": "counter",
        "resnet_serve_upload_size_bytes": "histogram",
    }
    for name, kind in expected.items():
        assert name in families and families[name].type == kind, name
    ok = {"route": "/classify", "method": "POST", "status": "200"}
    assert metric_value(text, "resnet_serve_http_requests_total", ok) == 1
    assert metric_value(text, "resnet_serve_http_requests_total", ok | {"status": "400"}) == 1
    assert metric_value(text, "resnet_serve_predictions_total", MODEL | {"label": "red"}) == 1
    assert metric_value(text, "resnet_serve_batch_size_rows_sum", MODEL) >= 10  # 10 crops
    assert metric_value(text, "resnet_serve_model_loads_total", MODEL) == 1
    info = {"model": "colours", "version": "20250101T000000Z", "provider": "CPUExecutionProvider"}
    assert metric_value(text, "resnet_serve_model_info", info) == 1
    assert metric_value(text, "resnet_serve_upload_size_bytes_count", {"route": "/classify"}) == 2


def test_concurrent_requests_coalesce_into_batches(models_dir: Path) -> None:
    with running_client(make_settings(models_dir, max_queue_delay_ms=50)) as client:
        gate = gate_model(client.app, "colours")  # type: ignore[arg-type]
        batcher = client.app.state.service.registry.resolve("colours").batcher  # type: ignore[attr-defined]

        def post() -> int:
            return client.post("/classify?crops=1", content=image_bytes((0, 0, 250)), headers=PNG).status_code

        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(post)
            assert gate.entered.wait(10)
            others = [pool.submit(post) for _ in range(4)]
            wait_until(lambda: batcher.depth == 4, what="4 queued requests")
            gate.gate.set()
            assert [f.result() for f in [first, *others]] == [200] * 5
        text = client.get("/metrics").text
    batches = metric_value(text, "resnet_serve_batch_size_requests_count", MODEL)
    requests = metric_value(text, "resnet_serve_batch_size_requests_sum", MODEL)
    singles = metric_value(text, "resnet_serve_batch_size_requests_bucket", MODEL | {"le": "1.0"})
    assert requests == 5 and batches < 5  # five requests (warm-up runs are not counted), fewer session runs
    assert batches - singles >= 1  # at least one run held several requests
    assert gate.batches[1:] == [4]  # the four queued requests ran together
    assert metric_value(text, "resnet_serve_queue_depth", MODEL) == 0


def test_an_upload_refused_on_its_content_length_is_counted_on_its_route(models_dir: Path) -> None:
    with running_client(make_settings(models_dir, max_upload_bytes=1000)) as client:
        refused = client.post("/classify", content=b"x" * 2000, headers=PNG)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "payload_too_large"
        text = client.get("/metrics").text
    too_large = {"route": "/classify", "method": "POST", "status": "413"}
    assert metric_value(text, "resnet_serve_http_requests_total", too_large) == 1
    assert metric_value(text, "resnet_serve_http_requests_total", {"route": "unmatched"}) == 0
