"""Admin endpoints; disabled unless ``SERVE_ADMIN_TOKEN`` is set."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends

from service.schemas import ErrorResponse, ReloadReport
from service.security import require_admin
from service.state import ServiceState, get_state

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}},
)


@router.post("/reload", response_model=ReloadReport, summary="Rescan the models directory now")
async def reload_models(state: ServiceState = Depends(get_state)) -> ReloadReport:
    """Loads new or changed files and unloads removed ones, then reports what changed."""
    report = await state.registry.scan()
    return ReloadReport(**asdict(report))
