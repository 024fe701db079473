"""Turns every exception into the one JSON error shape, with the right status and headers.

``{"error": {"code": ..., "message": ...}}`` everywhere, except under ``/v2/`` where the Open
Inference Protocol mandates ``{"error": "message"}``. Unexpected exceptions are logged with their
stack trace and answered with a generic 500: no trace ever reaches a client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.errors import INTERNAL_MESSAGE, ServiceError

log = logging.getLogger(__name__)

V2_PREFIX = "/v2"


def error_response(
    path: str, status: int, code: str, message: str, *, retry_after: int | None = None
) -> JSONResponse:
    """The JSON error answer for a request to ``path``."""
    headers: dict[str, str] = {}
    if status == 503 and retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    is_v2 = path == V2_PREFIX or path.startswith(V2_PREFIX + "/")
    body = {"error": message} if is_v2 else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _retry_after(request: Request, exc: ServiceError) -> int:
    if exc.retry_after is not None:
        return exc.retry_after
    settings = getattr(getattr(request.app.state, "service", None), "settings", None)
    return settings.retry_after_s if settings is not None else 1


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status_code >= 500:
        log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status_code, exc.code, exc)
    return error_response(
        request.url.path, exc.status_code, exc.code, exc.message, retry_after=_retry_after(request, exc)
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(request.url.path, exc.status_code, code, message)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()) if part not in ("query", "path", "body"))
        problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return error_response(request.url.path, 422, "invalid_parameter", "; ".join(problems))


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client closed the connection (or was closed for being too slow) before its body arrived."""
    log.info("%s %s: the client went away before its request was read", request.method, request.url.path)
    return Response(status_code=400)  # nobody reads it; the connection is gone


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal_error", INTERNAL_MESSAGE)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app`` (most specific first is not needed: lookup follows the MRO)."""
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
