"""The service API as a user calls it: classify (multipart, raw, batch), models, health, docs."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract_models import colour_model, publish
from fastapi.testclient import TestClient
from svc_testkit import image_bytes, make_settings, running_client

RED, GREEN, BLUE = (230, 20, 10), (15, 220, 30), (20, 40, 240)


def test_classify_multipart_returns_top_k_with_version_and_timings(client: TestClient) -> None:
    response = client.post("/classify", files={"image": ("cat.png", image_bytes(GREEN), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "colours" and body["version"] == "20250101T000000Z" and body["crops"] == 10
    assert len(body["predictions"]) == 3  # top_k 5, but the model has 3 labels
    top = body["predictions"][0]
    assert top["label"] == "green"
    assert top["index"] == 1 and top["probability"] > 0.9
    assert abs(sum(p["probability"] for p in body["predictions"]) - 1.0) < 1e-4
    assert set(body["timings"]) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert body["timings"]["total_ms"] >= body["timings"]["decode_ms"] >= 0


def test_classify_raw_body_with_one_crop_and_top_1(client: TestClient) -> None:
    response = client.post(
        "/classify?crops=1&top_k=1&model=colours",
        content=image_bytes(BLUE, fmt="JPEG"),
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["crops"] == 1
    assert [p["label"] for p in body["predictions"]] == ["blue"]


def test_batch_gives_one_result_per_image_and_isolates_a_bad_one(client: TestClient) -> None:
    files = [
        ("images", ("red.png", image_bytes(RED), "image/png")),
        ("images", ("broken.jpg", b"\xff\xd8 not really", "image/jpeg")),
        ("images", ("notes.txt", b"hello", "text/plain")),
        ("images", ("blue.webp", image_bytes(BLUE, fmt="WEBP"), "image/webp")),
    ]
    response = client.post("/classify/batch?top_k=1", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["red.png", "broken.jpg", "notes.txt", "blue.webp"]
    assert results[0]["predictions"][0]["label"] == "red" and results[0]["error"] is None
    assert results[1]["error"]["code"] == "invalid_image" and results[1]["predictions"] is None
    assert results[2]["error"]["code"] == "unsupported_media_type"
    assert results[3]["predictions"][0]["label"] == "blue"


def test_models_lists_metadata_status_and_providers(client: TestClient) -> None:
    body = client.get("/models").json()
    assert body["default_model"] == "colours"
    (info,) = body["models"]
    assert info["name"] == "colours" and info["status"] == "ready" and info["default"] is True
    assert info["num_labels"] == 3 and info["crop_size"] == 8 and info["resize_size"] == 10
    assert info["test_error_1crop"] == 0.25 and info["test_error_10crop"] is None
    assert info["providers"] == ["CPUExecutionProvider"]
    assert "labels" not in info
    detail = client.get("/models/colours").json()
    assert detail["labels"] == ["red", "green", "blue"] and detail["version"] == "20250101T000000Z"


def test_health_readiness_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["colours"]}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/classify", "/classify/batch", "/models", "/models/{name}", "/v2/models/{name}/infer"):
        assert path in paths
    assert "multipart/form-data" in paths["/classify"]["post"]["requestBody"]["content"]


def test_refused_model_is_reported_not_served(tmp_path: Path) -> None:
    publish(tmp_path / "colours.onnx", colour_model())
    publish(tmp_path / "nolabels.onnx", colour_model(drop=["labels"]))
    publish(tmp_path / "mismatch.onnx", colour_model(overrides={"labels": '["a", "b"]'}))
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with running_client(make_settings(tmp_path)) as client:
        client.post("/admin/reload")  # disabled (no admin token): must not matter
        status = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert status["colours"]["status"] == "ready"
        for name in ("nolabels", "mismatch", "garbage"):
            assert status[name]["status"] == "refused", name
            assert status[name]["providers"] == [] and status[name]["version"] is None
        assert "missing metadata labels" in status["nolabels"]["error"]
        assert "2 labels but the model outputs 3" in status["mismatch"]["error"]
        response = client.post(
            "/classify?model=nolabels", content=image_bytes(), headers={"content-type": "image/png"}
        )
        assert (
            response.status_code == 404 and "missing metadata labels" in response.json()["error"]["message"]
        )
        assert client.get("/readyz").json()["models"] == ["colours"]


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (("alpha", "resnet20-cifar10", "resnet50-imagenet"), "resnet50-imagenet"),
        (("alpha", "resnet20-cifar10"), "resnet20-cifar10"),
    ],
)
def test_the_imagenet_model_is_the_default_when_it_serves(
    tmp_path: Path, served: tuple[str, ...], expected: str
) -> None:
    for name in served:
        publish(tmp_path / f"{name}.onnx", colour_model())
    with running_client(make_settings(tmp_path), served) as client:
        response = client.post("/classify", content=image_bytes(), headers={"content-type": "image/png"})
        assert response.json()["model"] == expected
        listing = client.get("/models").json()
        assert listing["default_model"] == expected
        assert [m["name"] for m in listing["models"] if m["default"]] == [expected]


@pytest.mark.parametrize("configured", [None, "zeta"])
def test_default_model_prefers_the_configured_one(tmp_path: Path, configured: str | None) -> None:
    for name in ("alpha", "zeta"):
        publish(tmp_path / f"{name}.onnx", colour_model())
    with running_client(make_settings(tmp_path, default_model=configured), ["alpha", "zeta"]) as client:
        response = client.post("/classify", content=image_bytes(), headers={"content-type": "image/png"})
        assert response.json()["model"] == (configured or "alpha")
        assert client.get("/models").json()["default_model"] == (configured or "alpha")
