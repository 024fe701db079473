"""What is served: metadata, status, providers and test errors of every model file."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.errors import ModelNotFound
from service.model_contract import describe
from service.registry import ModelEntry
from service.schemas import ErrorResponse, ModelDetail, ModelInfo, ModelList
from service.state import ServiceState, get_state

router = APIRouter(tags=["models"])


def model_detail(entry: ModelEntry, default_name: str | None) -> ModelDetail:
    """The public view of one model file and the version serving it (if any)."""
    served = entry.current
    details = describe(served.metadata) if served else {}
    return ModelDetail(
        name=entry.name,
        status=entry.state.value,
        loading=entry.loading,
        error=entry.error,
        file=str(entry.path),
        providers=served.providers if served else [],
        loaded_at=served.loaded_at if served else None,
        default=entry.name == default_name,
        labels=list(served.metadata.labels) if served else [],
        **details,
    )


@router.get("/models", response_model=ModelList, summary="Every model file and its status")
async def list_models(state: ServiceState = Depends(get_state)) -> ModelList:
    default = state.registry.default_name()
    infos = [
        ModelInfo(**model_detail(e, default).model_dump(exclude={"labels"})) for e in state.registry.entries()
    ]
    return ModelList(default_model=default, models=infos)


@router.get(
    "/models/{name}",
    response_model=ModelDetail,
    responses={404: {"model": ErrorResponse}},
    summary="One model, with its labels",
)
async def get_model(name: str, state: ServiceState = Depends(get_state)) -> ModelDetail:
    entry = state.registry.entry(name)
    if entry is None:
        raise ModelNotFound(f"unknown model {name!r}")
    return model_detail(entry, state.registry.default_name())
