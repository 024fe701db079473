"""The page for people: ``GET /`` serves a single self-contained HTML file (no external assets) that
lists the models, uploads an image to ``POST /classify`` and shows the top-5 labels and the timings."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX = STATIC_DIR / "index.html"

router = APIRouter(tags=["ui"])


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    # No caching: a new release of the page should show on the next reload.
    return FileResponse(INDEX, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})
