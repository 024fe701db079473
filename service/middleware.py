"""Pure ASGI middleware: the upload limits (enforced while reading) and the HTTP metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Overloaded, PayloadTooLarge
from service.http_errors import error_response
from service.metrics import Metrics


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UploadBudget:
    """Request-body bytes that all requests in flight hold together, against one limit.

    A body stays in memory until its request is answered, so the bytes are given back only then.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class BodyLimitMiddleware:
    """413 for bodies above ``max_bytes``, 503 when the bodies in flight would exceed ``budget``.

    Both are checked at once when Content-Length is declared, else as the body arrives: a body
    without (or with a lying) Content-Length fails the read as soon as it crosses a limit, so
    nothing larger is buffered.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, budget: UploadBudget, retry_after_s: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.retry_after_s = retry_after_s

    def _too_large(self) -> str:
        return f"request body is larger than the upload limit of {self.max_bytes} bytes"

    def _busy(self) -> str:
        return (
            f"the uploads in flight hold the service's upload memory budget of {self.budget.limit} bytes; "
            "retry shortly"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(path, 413, PayloadTooLarge.code, self._too_large())(scope, receive, send)
            return
        held = declared or 0
        if not self.budget.take(held):
            busy = error_response(path, 503, Overloaded.code, self._busy(), retry_after=self.retry_after_s)
            await busy(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received, held
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._too_large())
                if received > held:
                    if not self.budget.take(received - held):
                        raise Overloaded(self._busy(), retry_after=self.retry_after_s)
                    held = received
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.budget.give(held)


class MetricsMiddleware:
    """Counts requests by route template, method and status; times them; tracks those in flight."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's live route list, so routers added later are matched too

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:  # answered before routing (e.g. the Content-Length 413)
            route = next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.http_in_flight.dec()
            route, method = self._template(scope), scope["method"]
            self.metrics.http_requests.labels(route, method, str(status)).inc()
            self.metrics.http_request_duration.labels(route, method).observe(time.perf_counter() - started)
