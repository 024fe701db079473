"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.errors import ServiceUnavailable
from service.schemas import ErrorResponse, Health, Readiness
from service.state import ServiceState, get_state

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": ErrorResponse, "description": "no model is loaded and warmed up yet"}},
    summary="At least one model is loaded and warmed up",
)
async def readyz(state: ServiceState = Depends(get_state)) -> Readiness:
    ready = state.registry.ready_names()
    if not ready:
        raise ServiceUnavailable("no model is loaded and warmed up yet")
    return Readiness(status="ready", models=ready)
