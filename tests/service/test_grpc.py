"""The Open Inference Protocol over gRPC, driven by Triton's own gRPC client (tritonclient.grpc) and, for
what that client does not send or show (typed tensor contents, trailers), by a raw channel carrying the
service's generated messages.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import numpy as np
import pytest
from contract_models import free_port, metric_value
from svc_testkit import LiveServer, gate_model, image_bytes, make_settings, wait_until

from service.oip import inference_pb2 as pb

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient
else:
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException

RED, GREEN, BLUE = (230, 20, 10), (15, 220, 30), (20, 40, 240)
VERSION = "20250101T000000Z"
TOKEN = "s3cret"
INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Endpoint:
    """A running service: its HTTP URL, its gRPC address and Triton's gRPC client on it."""

    server: LiveServer
    address: str
    triton: grpcclient.InferenceServerClient

    def raw_infer(self, request: pb.ModelInferRequest, **kwargs: Any) -> pb.ModelInferResponse:
        """One ModelInfer call over a plain channel (typed contents, trailers)."""
        with grpc.insecure_channel(self.address) as channel:
            call = channel.unary_unary(
                INFER,
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            response: pb.ModelInferResponse = call(request, **kwargs)
            return response


@contextmanager
def serving(models_dir: Path, **overrides: Any) -> Iterator[Endpoint]:
    port = free_port()
    with LiveServer(make_settings(models_dir, grpc_port=port, **overrides)) as server:
        address = f"127.0.0.1:{port}"
        yield Endpoint(server, address, grpcclient.InferenceServerClient(address))


@pytest.fixture(scope="module")
def endpoint(models_dir: Path) -> Iterator[Endpoint]:
    with serving(models_dir) as found:
        yield found


def bytes_input(*images: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def pixels_input(pixels: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def top1(triton: grpcclient.InferenceServerClient, *images: bytes, **kwargs: Any) -> list[int]:
    result = triton.infer("colours", [bytes_input(*images)], **kwargs)
    return [int(i) for i in result.as_numpy("probabilities").argmax(axis=1)]


def status_of(error: InferenceServerException) -> str:
    return str(error.status())


def test_health_and_metadata(endpoint: Endpoint) -> None:
    triton = endpoint.triton
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("colours") and triton.is_model_ready("colours", VERSION)
    assert not triton.is_model_ready("colours", "19990101T000000Z")
    metadata = triton.get_model_metadata("colours", as_json=True)
    assert metadata["name"] == "colours" and metadata["versions"] == [VERSION]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "3"]}]
    server = triton.get_server_metadata(as_json=True)
    assert server["name"] == "resnet-serve"
    assert {"classification", "model_configuration", "statistics", "model_repository"} <= set(
        server["extensions"]
    )
    with pytest.raises(InferenceServerException, match="unknown model") as missing:
        triton.get_model_metadata("nope")
    assert status_of(missing.value) == "StatusCode.NOT_FOUND"


def test_infers_encoded_images(endpoint: Endpoint) -> None:
    images = bytes_input(image_bytes(BLUE), image_bytes(RED, fmt="JPEG"), image_bytes(GREEN, fmt="WEBP"))
    result = endpoint.triton.infer("colours", [images], request_id="7")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float32
    assert list(probabilities.argmax(axis=1)) == [2, 0, 1]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    response = result.get_response(as_json=True)
    assert response["id"] == "7" and response["model_version"] == VERSION
    assert response["parameters"]["crops"] == {"int64_param": "10"}


def test_gives_the_same_probabilities_as_rest(endpoint: Endpoint) -> None:
    photo = image_bytes(GREEN, size=(40, 30), fmt="JPEG")
    over_grpc = endpoint.triton.infer("colours", [bytes_input(photo)]).as_numpy("probabilities")
    with httpx.Client(base_url=endpoint.server.url) as http:
        over_rest = http.post("/classify?top_k=3", files={"image": ("p.jpg", photo, "image/jpeg")}).json()
    by_index = {p["index"]: p["probability"] for p in over_rest["predictions"]}
    np.testing.assert_allclose(over_grpc[0], [by_index[i] for i in range(3)], rtol=1e-5)


def test_classification_extension(endpoint: Endpoint) -> None:
    wanted = [grpcclient.InferRequestedOutput("probabilities", class_count=2)]
    images = bytes_input(image_bytes(GREEN), image_bytes(RED))
    top = endpoint.triton.infer("colours", [images], outputs=wanted).as_numpy("probabilities")
    assert top.shape == (2, 2)
    probability, index, label = top[0, 0].decode().split(":")
    assert (index, label) == ("1", "green") and float(probability) > 0.9
    assert top[1, 0].decode().endswith(":0:red")


def test_uint8_pixels_and_one_crop(endpoint: Endpoint) -> None:
    pixels = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    pixels[0, ..., 2] = 220  # blue, already crop-sized: fed as it is
    pixels[1, ..., 0] = 220  # red
    result = endpoint.triton.infer("colours", [pixels_input(pixels)], parameters={"crops": 1})
    assert list(result.as_numpy("probabilities").argmax(axis=1)) == [2, 0]
    large = np.zeros((1, 30, 40, 3), dtype=np.uint8)
    large[..., 1] = 200  # any other size is resized and cropped like a decoded image
    assert endpoint.triton.infer("colours", [pixels_input(large)]).as_numpy("probabilities").argmax() == 1


def test_typed_contents_instead_of_raw(endpoint: Endpoint) -> None:
    request = pb.ModelInferRequest(model_name="colours", id="typed")
    request.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [image_bytes(RED), image_bytes(BLUE)]
    )
    response = endpoint.raw_infer(request)
    assert response.id == "typed" and list(response.outputs[0].shape) == [2, 3]
    probabilities = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 3)
    assert list(probabilities.argmax(axis=1)) == [0, 2]
    pixels = pb.ModelInferRequest(model_name="colours")
    tensor = pixels.inputs.add(name="pixels", datatype="UINT8", shape=[1, 8, 8, 3])
    tensor.contents.uint_contents.extend([0, 200, 0] * 64)
    pixels.parameters["crops"].int64_param = 1
    answer = endpoint.raw_infer(pixels)
    assert np.frombuffer(answer.raw_output_contents[0], dtype="<f4").argmax() == 1
    assert answer.parameters["crops"].int64_param == 1


def raw_request(
    datatype: str, shape: list[int], contents: dict[str, list], **extra: Any
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="colours", **extra)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


# The REST v2 suite's bad inputs (tests/service/test_v2.py), as gRPC requests.
BAD_REQUESTS = {
    "no input": (pb.ModelInferRequest(model_name="colours"), "inputs"),
    "not an image": (raw_request("BYTES", [1], {"bytes_contents": [b"hi"]}), "not a decodable image"),
    "shape vs elements": (raw_request("BYTES", [2], {"bytes_contents": [b"hi"]}), "shape"),
    "float input": (raw_request("FP32", [1], {"fp32_contents": [1.0]}), "FP32"),
    "pixel above 255": (raw_request("UINT8", [1, 2, 2, 3], {"uint_contents": [300] * 12}), "0-255"),
    "unknown output": (
        raw_request("BYTES", [1], {"bytes_contents": [b"hi"]}, outputs=[{"name": "logits"}]),
        "unknown output",
    ),
    "raw and inputs disagree": (
        pb.ModelInferRequest(model_name="colours", raw_input_contents=[b"", b""]),
        "raw_input_contents",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_and_the_service_keeps_serving(endpoint: Endpoint, case: str) -> None:
    request, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as error:
        endpoint.raw_infer(request)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details() and "Traceback" not in error.value.details()
    assert top1(endpoint.triton, image_bytes(RED)) == [0]


def test_client_errors_through_tritonclient(endpoint: Endpoint) -> None:
    with pytest.raises(InferenceServerException, match="unknown model") as missing:
        endpoint.triton.infer("nope", [bytes_input(image_bytes())])
    assert status_of(missing.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match=r"image 1: .*not a decodable image") as junk:
        endpoint.triton.infer("colours", [bytes_input(image_bytes(), b"junk")])
    assert status_of(junk.value) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="crops must be 1 or 10") as crops:
        endpoint.triton.infer("colours", [bytes_input(image_bytes())], parameters={"crops": 3})
    assert status_of(crops.value) == "StatusCode.INVALID_ARGUMENT"
    assert top1(endpoint.triton, image_bytes(BLUE)) == [2]


def test_size_limits_are_resource_exhausted(models_dir: Path) -> None:
    with serving(models_dir, max_batch_images=2, max_upload_bytes=200_000) as small:
        with pytest.raises(InferenceServerException, match="limit is 2") as many:
            small.triton.infer("colours", [bytes_input(*[image_bytes()] * 3)])
        assert status_of(many.value) == "StatusCode.RESOURCE_EXHAUSTED"
        huge = np.zeros((1, 300, 300, 3), dtype=np.uint8)  # 270,000 bytes: above the message limit
        with pytest.raises(InferenceServerException) as large:
            small.triton.infer("colours", [pixels_input(huge)])
        assert status_of(large.value) == "StatusCode.RESOURCE_EXHAUSTED"
        assert top1(small.triton, image_bytes(RED), image_bytes(GREEN)) == [0, 1]


def test_bearer_token_in_call_metadata(models_dir: Path) -> None:
    with serving(models_dir, auth_token=TOKEN) as guarded:
        triton = guarded.triton
        assert triton.is_server_ready() and triton.get_model_metadata("colours").name == "colours"
        with pytest.raises(InferenceServerException, match="Bearer") as missing:
            top1(triton, image_bytes())
        assert status_of(missing.value) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="wrong bearer token") as wrong:
            top1(triton, image_bytes(), headers={"authorization": "Bearer nope"})
        assert status_of(wrong.value) == "StatusCode.UNAUTHENTICATED"
        assert top1(triton, image_bytes(RED), headers={"authorization": f"Bearer {TOKEN}"}) == [0]


def test_overload_is_unavailable_at_once_with_retry_after(models_dir: Path) -> None:
    with serving(models_dir, request_timeout_s=10) as busy:
        app = busy.server.app
        gate = gate_model(app, "colours")
        batcher = app.state.service.registry.resolve("colours").batcher
        batcher.seconds_per_row = 0.25  # a 10-crop image takes 2.5 s, the deadline is 10 s
        request = raw_request("BYTES", [1], {"bytes_contents": [image_bytes()]})
        with ThreadPoolExecutor(3) as pool:
            admitted = [pool.submit(busy.raw_infer, request) for _ in range(3)]
            wait_until(lambda: batcher.rows_ahead == 30, what="three images admitted")
            with pytest.raises(grpc.RpcError) as refused:
                busy.raw_infer(request)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "cannot answer within 8 s" in refused.value.details()
            assert dict(refused.value.trailing_metadata())["retry-after"] == "8"
            assert not any(f.done() for f in admitted)
            gate.gate.set()
            assert [len(f.result().raw_output_contents) for f in admitted] == [1, 1, 1]


def test_a_client_deadline_shorter_than_the_work_is_refused(models_dir: Path) -> None:
    with serving(models_dir, request_timeout_s=10) as busy:
        app = busy.server.app
        gate = gate_model(app, "colours")
        batcher = app.state.service.registry.resolve("colours").batcher
        batcher.seconds_per_row = 0.3
        one_crop = raw_request("BYTES", [1], {"bytes_contents": [image_bytes()]})
        one_crop.parameters["crops"].int64_param = 1
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(busy.raw_infer, one_crop)
            wait_until(lambda: batcher.rows_ahead == 1, what="a request ahead")
            ten_crops = raw_request("BYTES", [1], {"bytes_contents": [image_bytes()]})
            with pytest.raises(grpc.RpcError) as refused:
                busy.raw_infer(ten_crops, timeout=2)  # 11 rows: 3.3 s against 0.8 x 2 s
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            gate.gate.set()
            assert len(ahead.result().raw_output_contents) == 1


def test_grpc_calls_are_counted_beside_http(endpoint: Endpoint) -> None:
    top1(endpoint.triton, image_bytes(GREEN))
    with pytest.raises(InferenceServerException):
        endpoint.triton.infer("nope", [bytes_input(image_bytes())])
    metrics = httpx.get(endpoint.server.url + "/metrics").text
    ok = {"method": "ModelInfer", "code": "OK"}
    assert metric_value(metrics, "resnet_serve_grpc_requests_total", ok) >= 1
    missing = {"method": "ModelInfer", "code": "NOT_FOUND"}
    assert metric_value(metrics, "resnet_serve_grpc_requests_total", missing) >= 1
    assert (
        metric_value(metrics, "resnet_serve_grpc_request_duration_seconds_count", {"method": "ModelInfer"})
        >= 2
    )


def test_the_port_setting_turns_grpc_off(models_dir: Path) -> None:
    port = free_port()
    with LiveServer(make_settings(models_dir, grpc_port=0)):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException):
            client.is_server_live(client_timeout=2)


def test_the_shipped_messages_match_the_proto() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the messages")
    script = Path(__file__).resolve().parents[2] / "scripts" / "generate_grpc.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- Triton's extensions: model configuration, statistics, repository index ---------------------------
def test_model_configuration_extension(endpoint: Endpoint) -> None:
    config = endpoint.triton.get_model_config("colours", as_json=True)["config"]
    assert config["name"] == "colours" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 16  # SERVE_MAX_BATCH_IMAGES: images per request
    assert config["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": ["1"]}]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": ["3"]}]
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == "2000"  # the tests' 2 ms
    assert batching["default_queue_policy"]["max_queue_size"] == 256
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["parameters"]["max_batch_rows"] == {"string_value": "64"}
    assert endpoint.triton.get_model_config("colours", VERSION).config.name == "colours"


def test_statistics_extension_counts_images_runs_and_failures(endpoint: Endpoint) -> None:
    def stats() -> dict:
        (model,) = endpoint.triton.get_inference_statistics("colours", as_json=True)["model_stats"]
        assert model["name"] == "colours" and model["version"] == VERSION
        return model

    def count(model: dict, field: str) -> int:
        return int(model["inference_stats"][field].get("count", 0))

    before = stats()
    assert top1(endpoint.triton, image_bytes(RED), image_bytes(BLUE)) == [0, 2]
    with pytest.raises(InferenceServerException):
        endpoint.triton.infer("colours", [bytes_input(b"junk")])
    after = stats()
    assert count(after, "success") == count(before, "success") + 2
    assert count(after, "fail") == count(before, "fail") + 1
    assert count(after, "queue") == count(before, "queue") + 2
    assert count(after, "compute_infer") == count(before, "compute_infer") + 2
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
    assert int(after["execution_count"]) > int(before.get("execution_count", 0))
    assert int(after["inference_stats"]["success"]["ns"]) > int(
        before["inference_stats"]["success"].get("ns", 0)
    )
    assert sum(int(b["compute_infer"]["count"]) for b in after["batch_stats"]) == int(
        after["execution_count"]
    )
    every = endpoint.triton.get_inference_statistics(as_json=True)["model_stats"]
    assert [m["name"] for m in every] == ["colours"]


def test_repository_index_and_no_model_control(endpoint: Endpoint) -> None:
    index = endpoint.triton.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "colours", "version": VERSION, "state": "READY"}]
    with pytest.raises(InferenceServerException) as error:
        endpoint.triton.load_model("colours")
    assert status_of(error.value) == "StatusCode.UNIMPLEMENTED"
