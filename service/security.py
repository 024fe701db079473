"""Bearer tokens: an optional one for classification, a separate one that enables admin endpoints."""

from __future__ import annotations

import hmac

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import Forbidden, Unauthorized
from service.state import ServiceState, get_state

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")


def check_token(
    expected: SecretStr,
    token: str | None,
    what: str,
    carrier: str = "an 'Authorization: Bearer <token>' header",
) -> None:
    """401 unless ``token`` (None: not sent) is ``expected``; compared in constant time."""
    if not token:
        raise Unauthorized(f"{what} needs {carrier}")
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise Unauthorized(f"wrong bearer token for {what}")


def _check(expected: SecretStr, credentials: HTTPAuthorizationCredentials | None, what: str) -> None:
    check_token(expected, credentials.credentials if credentials is not None else None, what)


async def require_client(
    state: ServiceState = Depends(get_state),
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> None:
    """Classification endpoints: open unless ``SERVE_AUTH_TOKEN`` is set."""
    if state.settings.auth_token is not None:
        _check(state.settings.auth_token, credentials, "classification")


async def require_admin(
    state: ServiceState = Depends(get_state),
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> None:
    """Admin endpoints: disabled unless ``SERVE_ADMIN_TOKEN`` is set, then that token is needed."""
    if state.settings.admin_token is None:
        raise Forbidden("admin endpoints are disabled; set SERVE_ADMIN_TOKEN to enable them")
    _check(state.settings.admin_token, credentials, "admin endpoints")
