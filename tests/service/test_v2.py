"""Open Inference Protocol v2: a real Triton client (binary extension) and the spec's JSON shapes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from fastapi.testclient import TestClient
from svc_testkit import LiveServer, image_bytes, make_settings, running_client

RED, GREEN, BLUE = (230, 20, 10), (15, 220, 30), (20, 40, 240)
VERSION = "20250101T000000Z"

if TYPE_CHECKING:
    import tritonclient.http as httpclient
else:
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def triton(models_dir: Path) -> Iterator[httpclient.InferenceServerClient]:
    with LiveServer(make_settings(models_dir)) as server:
        yield httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


def bytes_input(*images: bytes) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def test_triton_client_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("colours") and triton.is_model_ready("colours", VERSION)
    assert not triton.is_model_ready("colours", "19990101T000000Z")
    metadata = triton.get_model_metadata("colours")
    assert metadata["name"] == "colours" and metadata["versions"] == [VERSION]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert "classification" in triton.get_server_metadata()["extensions"]


def test_triton_client_infers_encoded_images_in_binary(triton: httpclient.InferenceServerClient) -> None:
    images = bytes_input(image_bytes(BLUE), image_bytes(RED, fmt="JPEG"), image_bytes(GREEN, fmt="WEBP"))
    result = triton.infer("colours", [images], request_id="7")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float32
    assert list(probabilities.argmax(axis=1)) == [2, 0, 1]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    response = result.get_response()
    assert response["id"] == "7" and response["model_version"] == VERSION
    assert response["parameters"]["crops"] == 10


def test_triton_client_classification_extension(triton: httpclient.InferenceServerClient) -> None:
    wanted = [httpclient.InferRequestedOutput("probabilities", class_count=2)]
    result = triton.infer("colours", [bytes_input(image_bytes(GREEN), image_bytes(RED))], outputs=wanted)
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    probability, index, label = top[0, 0].decode().split(":")
    assert (index, label) == ("1", "green") and float(probability) > 0.9
    assert top[1, 0].decode().endswith(":0:red")


def test_triton_client_uint8_pixels_and_one_crop(triton: httpclient.InferenceServerClient) -> None:
    pixels = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    pixels[0, ..., 2] = 220  # blue, already crop-sized: fed as it is
    pixels[1, ..., 0] = 220  # red
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = triton.infer("colours", [tensor], parameters={"crops": 1})
    assert list(result.as_numpy("probabilities").argmax(axis=1)) == [2, 0]
    large = np.zeros((1, 30, 40, 3), dtype=np.uint8)
    large[..., 1] = 200  # any other size is resized and cropped like a decoded image
    tensor = httpclient.InferInput("pixels", list(large.shape), "UINT8")
    tensor.set_data_from_numpy(large)
    assert triton.infer("colours", [tensor]).as_numpy("probabilities").argmax() == 1


def test_triton_client_sees_protocol_errors(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.infer("nope", [bytes_input(image_bytes())])
    with pytest.raises(InferenceServerException, match=r"image 1: .*not a decodable image"):
        triton.infer("colours", [bytes_input(image_bytes(), b"junk")])
    assert triton.infer("colours", [bytes_input(image_bytes(RED))]).as_numpy("probabilities").argmax() == 0


# ---- JSON, as in the specification's examples ------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_request_and_response_follow_the_spec(client: TestClient) -> None:
    request = {
        "id": "42",
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "data": [b64(image_bytes(RED)), b64(image_bytes(BLUE))],
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    response = client.post("/v2/models/colours/infer", json=request)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == "42" and body["model_name"] == "colours" and body["model_version"] == VERSION
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32" and output["shape"] == [2, 3]
    data = np.array(output["data"]).reshape(2, 3)  # row-major, flattened
    assert list(data.argmax(axis=1)) == [0, 2]


def test_json_classification_and_nested_uint8_data(client: TestClient) -> None:
    pixels = np.full((1, 8, 8, 3), (0, 200, 0)).tolist()
    request = {
        "inputs": [{"name": "pixels", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": pixels}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }
    output = client.post("/v2/models/colours/versions/" + VERSION + "/infer", json=request).json()["outputs"][
        0
    ]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 1]
    assert output["data"][0].endswith(":1:green")


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, "base64"),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]}, "shape"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "FP32"),
        (
            {"inputs": [{"name": "p", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [300] * 12}]},
            "0-255",
        ),
        (
            {
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
                "outputs": [{"name": "logits"}],
            },
            "unknown output",
        ),
    ],
)
def test_json_errors_use_the_protocol_error_shape(
    client: TestClient, request_body: dict, message: str
) -> None:
    response = client.post("/v2/models/colours/infer", json=request_body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error, str) and message in error
    assert client.get("/v2/models/colours/ready").status_code == 200


def test_v2_health_and_unknown_model(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    response = client.get("/v2/models/nope")
    assert response.status_code == 404 and isinstance(response.json()["error"], str)


def test_too_many_images_in_one_request_is_413(models_dir: Path) -> None:
    with running_client(make_settings(models_dir, max_batch_images=2)) as client:
        data = [b64(image_bytes())] * 3
        request = {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": data}]}
        response = client.post("/v2/models/colours/infer", json=request)
        assert response.status_code == 413 and "limit is 2" in response.json()["error"]
        request["inputs"][0].update(shape=[2], data=data[:2])
        assert client.post("/v2/models/colours/infer", json=request).status_code == 200


# ---- Triton's extensions over REST ---------------------------------------------------------------------
def test_triton_client_reads_config_statistics_and_repository_index(
    triton: httpclient.InferenceServerClient,
) -> None:
    config = triton.get_model_config("colours")
    assert config["max_batch_size"] == 16 and config["output"][0]["dims"] == [3]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert triton.get_model_config("colours", VERSION)["name"] == "colours"
    (before,) = triton.get_inference_statistics("colours")["model_stats"]
    triton.infer("colours", [bytes_input(image_bytes(RED), image_bytes(GREEN))])
    (after,) = triton.get_inference_statistics("colours")["model_stats"]
    success = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert success == 2 and after["inference_count"] - before["inference_count"] == 2
    assert [m["name"] for m in triton.get_inference_statistics()["model_stats"]] == ["colours"]
    assert triton.get_model_repository_index() == [
        {"name": "colours", "version": VERSION, "state": "READY", "reason": ""}
    ]
    with pytest.raises(InferenceServerException, match="model control is not offered"):
        triton.load_model("colours")


def test_extensions_answer_404_for_an_unknown_model(client: TestClient) -> None:
    for path in ("/v2/models/nope/config", "/v2/models/nope/stats", "/v2/models/colours/versions/1/config"):
        response = client.get(path)
        assert response.status_code == 404 and isinstance(response.json()["error"], str)
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert [m["name"] for m in ready] == ["colours"]
