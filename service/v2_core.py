"""The Open Inference Protocol's operations, shared by REST (``routers/v2.py``) and gRPC (``grpc_server.py``).

Each takes the service state and plain values and returns plain data (dicts in the protocol's JSON shape,
numpy arrays, :class:`~service.v2_protocol.Tensor`); the transports only translate. Errors are the
service's own exceptions, which each transport maps to its status codes.

Beyond the core protocol: Triton's classification, binary tensor data (REST), model configuration,
statistics and model repository (index only: the service serves the files of its models directory and
reloads them itself, so clients cannot load or unload models) extensions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np

import service
from service.classifier import ImageResult, check_crops
from service.errors import BadRequest, ModelNotFound, ServiceError
from service.registry import LoadedModel, ModelState
from service.state import ServiceState
from service.uploads import check_image_count
from service.v2_protocol import (
    BYTES,
    FP32,
    OUTPUT,
    UINT8,
    InferRequest,
    RequestInput,
    RequestOutput,
    Tensor,
    classification,
    encoded_images,
    pixel_batch,
)

SERVER_NAME = "resnet-serve"
INPUT = "image"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "model_repository"]
MODEL_CONTROL_OFF = (
    "model control is not offered: the service serves every *.onnx file of its models directory and "
    "loads, replaces and unloads them as files appear, change or go"
)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": service.__version__, "extensions": EXTENSIONS}


def server_ready(state: ServiceState) -> bool:
    """Ready once some model is loaded and warmed up."""
    return bool(state.registry.ready_names())


def model_ready(state: ServiceState, name: str, version: str | None) -> bool:
    """Whether ``name`` (at ``version``) answers now; :class:`ModelNotFound` for a name never served."""
    try:
        state.registry.resolve(name, version)
    except ModelNotFound:
        raise
    except ServiceError:
        return False
    return True


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    meta = model.metadata
    return {
        "name": model.name,
        "versions": [meta.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": BYTES, "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": FP32, "shape": [-1, meta.num_classes]}],
        "parameters": {
            "crop_size": meta.crop_size,
            "resize_size": meta.resize_size,
            "labels": len(meta.labels),
        },
    }


def model_config(state: ServiceState, model: LoadedModel) -> dict[str, Any]:
    """Triton's model configuration, derived from the model contract and the batching settings.

    ``max_batch_size`` is the images one request may carry; the batcher's own knobs are its dynamic
    batching (queue delay, queue limit) and the ``max_batch_rows`` parameter (crops per session run).
    """
    settings, meta = state.settings, model.metadata
    on_gpu = any(p != "CPUExecutionProvider" for p in model.providers)
    parameters = {
        "crop_size": meta.crop_size,
        "resize_size": meta.resize_size,
        "crops_default": 10,
        "max_batch_rows": settings.max_batch_size,
        "precision": meta.precision,
        "execution_providers": ",".join(model.providers),
        "version": meta.version,
    }
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": settings.max_batch_images,
        "input": [{"name": INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}],
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [meta.num_classes]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000),
            "default_queue_policy": {
                "max_queue_size": settings.max_queue_size,
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(settings.request_timeout_s * 1_000_000),
                "allow_timeout_override": True,  # a gRPC deadline shortens it
            },
        },
        "instance_group": [{"name": model.name, "kind": "KIND_GPU" if on_gpu else "KIND_CPU", "count": 1}],
        "default_model_filename": model.path.name,
        "parameters": {key: {"string_value": str(value)} for key, value in parameters.items()},
    }


def model_statistics(state: ServiceState, name: str | None, version: str | None) -> dict[str, Any]:
    """The statistics extension's answer: ``name`` (at ``version``), or every model serving now."""
    if name:
        models = [state.registry.resolve(name, version)]
    else:
        models = [m for m in (e.current for e in state.registry.entries()) if m is not None]
    stats = state.metrics.statistics
    return {"model_stats": [stats.model(m.name, m.metadata.version) for m in models]}


REPOSITORY_STATES = {
    ModelState.READY: "READY",
    ModelState.LOADING: "LOADING",
    ModelState.REFUSED: "UNAVAILABLE",
    ModelState.FAILED: "UNAVAILABLE",
}


def repository_index(state: ServiceState, ready_only: bool) -> list[dict[str, str]]:
    """Every model file of the models directory, with its state (only the ready ones if ``ready_only``)."""
    index = []
    for entry in state.registry.entries():
        ready = entry.current is not None
        if ready_only and not ready:
            continue
        index.append(
            {
                "name": entry.name,
                "version": entry.current.metadata.version if entry.current else "",
                "state": "READY" if ready else REPOSITORY_STATES[entry.state],
                "reason": "" if ready else (entry.error or ""),
            }
        )
    return index


# ---------------------------------------------------------------- inference


@dataclass(frozen=True)
class InferAnswer:
    """The model that answered, its protocol body fields and the output tensors (binary ones named)."""

    body: dict[str, Any]
    tensors: list[Tensor]
    binary: set[str]


async def _all(work: list[Awaitable[ImageResult]]) -> list[ImageResult]:
    """Results of every image; the first failure is re-raised naming its image."""
    results = await asyncio.gather(*work, return_exceptions=True)
    for i, result in enumerate(results):
        if isinstance(result, ServiceError):
            result.message = f"image {i}: {result.message}"
            raise result
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, ImageResult)]


async def _classify_input(
    state: ServiceState,
    served: LoadedModel,
    item: RequestInput,
    buffer: bytes | None,
    crops: int,
    timeout_s: float | None,
) -> list[ImageResult]:
    """Class probabilities of every image of the one input tensor."""
    limit = state.settings.max_batch_images
    classifier = state.classifier
    if item.datatype == BYTES:
        images = encoded_images(item, buffer)
        check_image_count(len(images), limit)
        return await _all([classifier.classify_bytes(served, d, crops, timeout_s=timeout_s) for d in images])
    if item.datatype == UINT8:
        pixels = pixel_batch(item, buffer)
        check_image_count(len(pixels), limit)
        return await _all([classifier.classify_pixels(served, p, crops, timeout_s=timeout_s) for p in pixels])
    raise BadRequest(f"datatype {item.datatype} is not accepted: send BYTES images or UINT8 pixels")


def _output_plan(infer: InferRequest) -> list[tuple[int, bool]]:
    """(classification count, as binary) per requested output, all outputs by default; checked early."""
    binary_default = bool(infer.parameters.get("binary_data_output", False))
    plan = []
    for out in infer.outputs or [RequestOutput(name=OUTPUT)]:
        if out.name != OUTPUT:
            raise BadRequest(f"unknown output {out.name!r}; this model has {OUTPUT!r}")
        k = out.parameters.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise BadRequest("classification must be a positive integer")
        plan.append((k, bool(out.parameters.get("binary_data", binary_default))))
    return plan


def _output_tensors(
    plan: list[tuple[int, bool]], probabilities: np.ndarray, labels: tuple[str, ...]
) -> tuple[list[Tensor], set[str]]:
    tensors, binary = [], set()
    for k, as_binary in plan:
        if k:
            tensors.append(classification(probabilities, labels, k))
        else:
            tensors.append(Tensor(OUTPUT, FP32, list(probabilities.shape), probabilities))
        if as_binary:
            binary.add(OUTPUT)
    return tensors, binary


def admit(state: ServiceState, name: str, version: str | None, timeout_s: float | None = None) -> None:
    """404, or 503 when not even one crop of ``name`` could be answered in time: before reading a body."""
    state.classifier.check_admission(state.registry.resolve(name, version), 1, timeout_s)


async def infer(
    state: ServiceState,
    name: str,
    version: str | None,
    request: InferRequest,
    buffers: list[bytes | None],
    timeout_s: float | None = None,
) -> InferAnswer:
    """Classify the images of ``request``'s one input (``buffers``: its binary data, if any)."""
    if len(request.inputs) != 1:
        raise BadRequest("send exactly one input: BYTES encoded images or UINT8 [N, H, W, 3] pixels")
    crops = check_crops(request.parameters.get("crops", 10))
    plan = _output_plan(request)
    async with state.registry.use(name, version) as served:  # the version admitted, or 404
        results = await _classify_input(state, served, request.inputs[0], buffers[0], crops, timeout_s)
    labels = served.metadata.labels
    probabilities = (
        np.stack([r.probabilities for r in results]) if results else np.zeros((0, len(labels)), np.float32)
    )
    tensors, binary = _output_tensors(plan, probabilities, labels)
    body: dict[str, Any] = {
        "model_name": served.name,
        "model_version": served.metadata.version,
        "parameters": {"crops": results[0].crops if results else crops},
    }
    if request.id is not None:
        body["id"] = request.id
    return InferAnswer(body, tensors, binary)
