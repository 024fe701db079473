"""Open Inference Protocol v2 endpoints (KServe, Triton clients).

Input: one tensor, either BYTES ``[N]`` of encoded images (preprocessed like ``/classify``,
``crops`` request parameter 1 or 10, default 10) or UINT8 ``[N, H, W, 3]`` pixels (a
``crop_size`` square is fed as it is, any other size is resized and cropped). Output
``probabilities``: FP32 ``[N, classes]``, or top-k ``"prob:index:label"`` strings with the
classification extension. Errors use the protocol's ``{"error": "message"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import service
from service.classifier import ImageResult, check_crops
from service.errors import BadRequest, ModelNotFound, ServiceError
from service.registry import LoadedModel
from service.security import require_client
from service.state import ServiceState, get_state
from service.uploads import check_image_count
from service.v2_protocol import (
    BYTES,
    FP32,
    HEADER_LENGTH,
    OUTPUT,
    UINT8,
    InferRequest,
    RequestInput,
    RequestOutput,
    Tensor,
    classification,
    encoded_images,
    parse_request,
    pixel_batch,
    render,
)

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

SERVER_NAME = "resnet-serve"
EXTENSIONS = ["binary_tensor_data", "classification"]


def _status(ok: bool, key: str) -> JSONResponse:
    """Health answers: 200 when true, 400 when false (the protocol wants a 4xx)."""
    return JSONResponse({key: ok}, status_code=200 if ok else 400)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": service.__version__, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Server live")
async def live() -> JSONResponse:
    return _status(True, "live")


@router.get("/health/ready", summary="Server ready (some model is loaded and warmed up)")
async def ready(state: ServiceState = Depends(get_state)) -> JSONResponse:
    return _status(bool(state.registry.ready_names()), "ready")


def _metadata(model: LoadedModel) -> dict[str, Any]:
    meta = model.metadata
    return {
        "name": model.name,
        "versions": [meta.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": BYTES, "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": FP32, "shape": [-1, meta.num_classes]}],
        "parameters": {
            "crop_size": meta.crop_size,
            "resize_size": meta.resize_size,
            "labels": len(meta.labels),
        },
    }


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return _metadata(state.registry.resolve(name))


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
async def model_version_metadata(
    name: str, version: str, state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    return _metadata(state.registry.resolve(name, version))


def _model_ready(state: ServiceState, name: str, version: str | None) -> JSONResponse:
    try:
        state.registry.resolve(name, version)
    except ModelNotFound:
        raise
    except ServiceError:
        return _status(False, "ready")
    return _status(True, "ready")


@router.get("/models/{name}/ready", summary="Model ready")
async def model_ready(name: str, state: ServiceState = Depends(get_state)) -> JSONResponse:
    return _model_ready(state, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready")
async def model_version_ready(
    name: str, version: str, state: ServiceState = Depends(get_state)
) -> JSONResponse:
    return _model_ready(state, name, version)


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
    state: ServiceState, served: LoadedModel, item: RequestInput, buffer: bytes | None, crops: int
) -> list[ImageResult]:
    """Class probabilities of every image of the one input tensor."""
    limit = state.settings.max_batch_images
    if item.datatype == BYTES:
        images = encoded_images(item, buffer)
        check_image_count(len(images), limit)
        return await _all([state.classifier.classify_bytes(served, data, crops) for data in images])
    if item.datatype == UINT8:
        pixels = pixel_batch(item, buffer)
        check_image_count(len(pixels), limit)
        return await _all([state.classifier.classify_pixels(served, image, crops) for image in pixels])
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


async def _infer(request: Request, state: ServiceState, name: str, version: str | None) -> Response:
    # 404, or 503 when not even one crop could be answered in time, before reading the body.
    state.classifier.check_admission(state.registry.resolve(name, version), 1)
    infer, buffers = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    if len(infer.inputs) != 1:
        raise BadRequest("send exactly one input: BYTES encoded images or UINT8 [N, H, W, 3] pixels")
    crops = check_crops(infer.parameters.get("crops", 10))
    plan = _output_plan(infer)
    async with state.registry.use(name, version) as served:  # the version admitted above, or 404
        results = await _classify_input(state, served, infer.inputs[0], buffers[0], crops)
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
    if infer.id is not None:
        body["id"] = infer.id
    rendered = render(body, tensors, binary)
    return Response(rendered.content, media_type=rendered.media_type, headers=rendered.headers)


@router.post("/models/{name}/infer", summary="Inference", dependencies=[Depends(require_client)])
async def infer(name: str, request: Request, state: ServiceState = Depends(get_state)) -> Response:
    return await _infer(request, state, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    dependencies=[Depends(require_client)],
)
async def infer_version(
    name: str, version: str, request: Request, state: ServiceState = Depends(get_state)
) -> Response:
    return await _infer(request, state, name, version)
