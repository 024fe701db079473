"""``POST /classify`` and ``POST /classify/batch``: the service's own classification API."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from service.classifier import (
    MAX_EXPLAIN_CLASSES,
    Explain,
    ImageResult,
    check_crops,
    check_explainable,
    explain_classes,
    top_predictions,
)
from service.errors import INTERNAL_MESSAGE, InvalidParameter, ServiceError
from service.registry import LoadedModel
from service.schemas import (
    BatchItem,
    BatchResponse,
    ClassifyResponse,
    ErrorBody,
    ErrorResponse,
    Explanation,
    Timings,
)
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
        422: "bad parameters, or explain=true on a model without a feature output (explanation_unavailable)",
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
    explain: bool = False
    explain_class: tuple[str, ...] = ()


async def classify_params(  # async: no worker-thread round trip (see get_state)
    model: str | None = Query(None, description="model name (file stem); default: the configured default"),
    top_k: int = Query(5, ge=1, le=1000, description="how many classes to return"),
    crops: int = Query(10, description="10 (the paper's 10-crop testing) or 1 (centre crop)"),
    timeout: float | None = Query(
        None,
        gt=0,
        description="seconds the client waits for each image (capped by SERVE_REQUEST_TIMEOUT_S); an image "
        "that cannot be answered in time gets 503 with Retry-After at once",
    ),
    explain: bool = Query(
        False,
        description="add each image's class activation map (where the model looked) as a small PNG heatmap; "
        "422 explanation_unavailable on a model without a feature output",
    ),
    explain_class: list[str] = Query(
        [],
        description=f"with explain=true: the classes to explain (labels or indices, at most "
        f"{MAX_EXPLAIN_CLASSES}; default: the top-1 class)",
    ),
) -> ClassifyParams:
    if explain_class and not explain:
        raise InvalidParameter("explain_class needs explain=true")
    return ClassifyParams(model, top_k, check_crops(crops), timeout, explain, tuple(explain_class))


def explain_request(model: LoadedModel, params: ClassifyParams) -> Explain | None:
    """What ``params`` ask ``model`` to explain (None: nothing); 422 when it cannot or the classes are bad."""
    if not params.explain:
        return None
    check_explainable(model)
    classes = (
        explain_classes(list(params.explain_class), model.metadata.labels) if params.explain_class else None
    )
    return Explain(classes)


def _timings(result: ImageResult) -> Timings:
    return Timings(**result.timings.as_ms())


def _explanations(result: ImageResult, served: LoadedModel) -> list[Explanation] | None:
    if result.explanations is None:
        return None
    return [
        Explanation(
            label=served.metadata.labels[e.index],
            index=e.index,
            probability=float(result.probabilities[e.index]),
            grid_width=e.heatmap.width,
            grid_height=e.heatmap.height,
            value_min=e.heatmap.low,
            value_max=e.heatmap.high,
            heatmap_png=e.heatmap.png_base64,
        )
        for e in result.explanations
    ]


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,  # no explanations key (nor explain_ms) unless explain=true
    responses=ERRORS,
    openapi_extra=SINGLE_IMAGE_BODY,
    summary="Classify one image (multipart field 'image' or a raw image body)",
)
async def classify(
    request: Request,
    state: ServiceState = Depends(get_state),
    params: ClassifyParams = Depends(classify_params),
) -> ClassifyResponse:
    # 404, 422 (nothing to explain with), or 503 when even this image could not be answered in time,
    # before reading the upload.
    resolved = state.registry.resolve(params.model)
    explain_request(resolved, params)
    state.classifier.check_admission(resolved, params.crops, params.timeout)
    upload = await read_image(request)
    state.metrics.upload_size.labels("/classify").observe(len(upload.data))
    async with state.registry.use(params.model) as served:
        result = await state.classifier.classify_bytes(
            served,
            upload.data,
            params.crops,
            timeout_s=params.timeout,
            explain=explain_request(served, params),
        )
    return ClassifyResponse(
        model=served.name,
        version=served.metadata.version,
        crops=result.crops,
        predictions=top_predictions(result.probabilities, served.metadata.labels, params.top_k),
        timings=_timings(result),
        explanations=_explanations(result, served),
    )


async def _classify_upload(
    state: ServiceState, served: LoadedModel, upload: Upload, params: ClassifyParams, explain: Explain | None
) -> BatchItem:
    """One batch entry: predictions (and maps), or the error of this image alone."""
    try:
        if upload.error is not None:
            raise upload.error
        state.metrics.upload_size.labels("/classify/batch").observe(len(upload.data))
        result = await state.classifier.classify_bytes(
            served, upload.data, params.crops, timeout_s=params.timeout, explain=explain
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
        explanations=_explanations(result, served),
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
    resolved = state.registry.resolve(params.model)
    explain_request(resolved, params)
    state.classifier.check_admission(resolved, params.crops, params.timeout)
    uploads = await read_images(request, "images", state.settings.max_batch_images)
    async with state.registry.use(params.model) as served:
        explain = explain_request(served, params)
        results = await asyncio.gather(
            *(_classify_upload(state, served, u, params, explain) for u in uploads)
        )
    return BatchResponse(
        model=served.name, version=served.metadata.version, crops=params.crops, results=results
    )
