"""``POST /classify`` and ``POST /classify/batch``: the service's own classification API."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from service.classifier import ImageResult, check_crops, top_predictions
from service.errors import INTERNAL_MESSAGE, ServiceError
from service.registry import LoadedModel
from service.schemas import BatchItem, BatchResponse, ClassifyResponse, ErrorBody, ErrorResponse, Timings
from service.security import require_client
from service.state import ServiceState, get_state
from service.uploads import Upload, read_image, read_images

log = logging.getLogger(__name__)

router = APIRouter(tags=["classify"], dependencies=[Depends(require_client)])

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "undecodable, truncated or empty image",
        401: "missing or wrong bearer token (when SERVE_AUTH_TOKEN is set)",
        404: "unknown model",
        413: "upload above the limit, or too many pixels",
        415: "not an image content type",
        422: "bad parameters",
        503: "not ready, overloaded, or not answerable within the deadline (see Retry-After)",
        504: "timeout",
    }.items()
}
_IMAGE = {"type": "string", "format": "binary"}
SINGLE_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": _IMAGE}, "required": ["image"]}
            },
            "image/*": {"schema": _IMAGE},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": _IMAGE}},
                    "required": ["images"],
                }
            }
        },
    }
}


@dataclass
class ClassifyParams:
    """The query parameters both classification endpoints take."""

    model: str | None
    top_k: int
    crops: int
    timeout: float | None


def classify_params(
    model: str | None = Query(None, description="model name (file stem); default: the configured default"),
    top_k: int = Query(5, ge=1, le=1000, description="how many classes to return"),
    crops: int = Query(10, description="10 (the paper's 10-crop testing) or 1 (centre crop)"),
    timeout: float | None = Query(
        None,
        gt=0,
        description="seconds the client waits for each image (capped by SERVE_REQUEST_TIMEOUT_S); an image "
        "that cannot be answered in time gets 503 with Retry-After at once",
    ),
) -> ClassifyParams:
    return ClassifyParams(model, top_k, check_crops(crops), timeout)


def _timings(result: ImageResult) -> Timings:
    return Timings(**result.timings.as_ms())


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=SINGLE_IMAGE_BODY,
    summary="Classify one image (multipart field 'image' or a raw image body)",
)
async def classify(
    request: Request,
    state: ServiceState = Depends(get_state),
    params: ClassifyParams = Depends(classify_params),
) -> ClassifyResponse:
    # 404, or 503 when even this image could not be answered in time, before reading the upload.
    state.classifier.check_admission(state.registry.resolve(params.model), params.crops, params.timeout)
    upload = await read_image(request)
    state.metrics.upload_size.labels("/classify").observe(len(upload.data))
    async with state.registry.use(params.model) as served:
        result = await state.classifier.classify_bytes(
            served, upload.data, params.crops, timeout_s=params.timeout
        )
    return ClassifyResponse(
        model=served.name,
        version=served.metadata.version,
        crops=result.crops,
        predictions=top_predictions(result.probabilities, served.metadata.labels, params.top_k),
        timings=_timings(result),
    )


async def _classify_upload(
    state: ServiceState, served: LoadedModel, upload: Upload, params: ClassifyParams
) -> BatchItem:
    """One batch entry: predictions, or the error of this image alone."""
    try:
        if upload.error is not None:
            raise upload.error
        state.metrics.upload_size.labels("/classify/batch").observe(len(upload.data))
        result = await state.classifier.classify_bytes(
            served, upload.data, params.crops, timeout_s=params.timeout
        )
    except ServiceError as exc:
        return BatchItem(filename=upload.filename, error=ErrorBody(code=exc.code, message=exc.message))
    except Exception:
        log.exception("unexpected error on a batch image")
        error = ErrorBody(code="internal_error", message=INTERNAL_MESSAGE)
        return BatchItem(filename=upload.filename, error=error)
    return BatchItem(
        filename=upload.filename,
        predictions=top_predictions(result.probabilities, served.metadata.labels, params.top_k),
        timings=_timings(result),
    )


@router.post(
    "/classify/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=BATCH_BODY,
    summary="Classify several images (multipart 'images' parts); a bad image fails alone",
)
async def classify_batch(
    request: Request,
    state: ServiceState = Depends(get_state),
    params: ClassifyParams = Depends(classify_params),
) -> BatchResponse:
    state.classifier.check_admission(state.registry.resolve(params.model), params.crops, params.timeout)
    uploads = await read_images(request, "images", state.settings.max_batch_images)
    async with state.registry.use(params.model) as served:
        results = await asyncio.gather(*(_classify_upload(state, served, u, params) for u in uploads))
    return BatchResponse(
        model=served.name, version=served.metadata.version, crops=params.crops, results=results
    )
