"""Open Inference Protocol v2 endpoints over REST (KServe, Triton clients); the operations are
``service/v2_core.py``'s, shared with the gRPC endpoint.

Input: one tensor, either BYTES ``[N]`` of encoded images (preprocessed like ``/classify``,
``crops`` request parameter 1 or 10, default 10) or UINT8 ``[N, H, W, 3]`` pixels (a
``crop_size`` square is fed as it is, any other size is resized and cropped). Output
``probabilities``: FP32 ``[N, classes]``, or top-k ``"prob:index:label"`` strings with the
classification extension. Also Triton's model configuration, statistics and repository index
extensions. Errors use the protocol's ``{"error": "message"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse

from service import v2_core
from service.errors import Forbidden
from service.security import require_client
from service.state import ServiceState, get_state
from service.v2_protocol import HEADER_LENGTH, parse_request, render

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])


def _status(ok: bool, key: str) -> JSONResponse:
    """Health answers: 200 when true, 400 when false (the protocol wants a 4xx)."""
    return JSONResponse({key: ok}, status_code=200 if ok else 400)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return v2_core.server_metadata()


@router.get("/health/live", summary="Server live")
async def live() -> JSONResponse:
    return _status(True, "live")


@router.get("/health/ready", summary="Server ready (some model is loaded and warmed up)")
async def ready(state: ServiceState = Depends(get_state)) -> JSONResponse:
    return _status(v2_core.server_ready(state), "ready")


@router.get("/models/stats", summary="Statistics of every model serving (statistics extension)")
async def all_statistics(state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return v2_core.model_statistics(state, None, None)


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(name: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return v2_core.model_metadata(state.registry.resolve(name))


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version")
async def model_version_metadata(
    name: str, version: str, state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    return v2_core.model_metadata(state.registry.resolve(name, version))


@router.get("/models/{name}/ready", summary="Model ready")
async def model_ready(name: str, state: ServiceState = Depends(get_state)) -> JSONResponse:
    return _status(v2_core.model_ready(state, name, None), "ready")


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready")
async def model_version_ready(
    name: str, version: str, state: ServiceState = Depends(get_state)
) -> JSONResponse:
    return _status(v2_core.model_ready(state, name, version), "ready")


@router.get("/models/{name}/config", summary="Model configuration (model configuration extension)")
async def model_config(name: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return v2_core.model_config(state, state.registry.resolve(name))


@router.get("/models/{name}/versions/{version}/config", summary="Model configuration of one version")
async def model_version_config(
    name: str, version: str, state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    return v2_core.model_config(state, state.registry.resolve(name, version))


@router.get("/models/{name}/stats", summary="Model statistics (statistics extension)")
async def model_statistics(name: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return v2_core.model_statistics(state, name, None)


@router.get("/models/{name}/versions/{version}/stats", summary="Model statistics of one version")
async def model_version_statistics(
    name: str, version: str, state: ServiceState = Depends(get_state)
) -> dict[str, Any]:
    return v2_core.model_statistics(state, name, version)


@router.post("/repository/index", summary="Every model file and its state (model repository extension)")
async def repository_index(
    state: ServiceState = Depends(get_state), body: dict[str, Any] | None = Body(default=None)
) -> list[dict[str, str]]:
    return v2_core.repository_index(state, bool((body or {}).get("ready", False)))


@router.post("/repository/models/{name}/load", summary="Not offered: models load from the models directory")
@router.post("/repository/models/{name}/unload", summary="Not offered: remove the file instead")
async def model_control(name: str) -> None:
    raise Forbidden(v2_core.MODEL_CONTROL_OFF)


async def _infer(request: Request, state: ServiceState, name: str, version: str | None) -> Response:
    v2_core.admit(state, name, version)  # 404 or 503 before the body is read
    infer, buffers = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    answer = await v2_core.infer(state, name, version, infer, buffers)
    rendered = render(answer.body, answer.tensors, answer.binary)
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
