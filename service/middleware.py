"""Pure ASGI middleware: the upload limits (enforced while reading) and the HTTP metrics."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Overloaded, PayloadTooLarge
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

    def busy_message(self) -> str:
        """What a request refused because the budget is held is told (HTTP 503, gRPC UNAVAILABLE)."""
        return (
            f"the uploads in flight hold the service's upload memory budget of {self.limit} bytes; "
            "retry shortly"
        )


class BodyLimitMiddleware:
    """413 for bodies above ``max_bytes``, 503 when the bodies in flight would exceed ``budget``.

    Both are checked on the first read when Content-Length is declared, else as the body arrives: a
    body without (or with a lying) Content-Length fails the read as soon as it crosses a limit, so
    nothing larger is buffered. A route that never reads its body holds no budget.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, budget: UploadBudget, retry_after_s: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.retry_after_s = retry_after_s

    def _too_large(self) -> str:
        return f"request body is larger than the upload limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = held = 0

        # The limits fail the first read of the body, inside the route: its error handler answers
        # (and the metrics name the route) before a byte of a too large body is buffered.
        async def limited_receive() -> Message:
            nonlocal received, held
            if declared is not None and declared > self.max_bytes:
                raise PayloadTooLarge(self._too_large())
            if declared and not held:
                if not self.budget.take(declared):
                    raise Overloaded(self.budget.busy_message(), retry_after=self.retry_after_s)
                held = declared
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._too_large())
                if received > held:
                    if not self.budget.take(received - held):
                        raise Overloaded(self.budget.busy_message(), retry_after=self.retry_after_s)
                    held = received
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.budget.give(held)


class MetricsMiddleware:
    """Counts requests by route template, method and status; times them; tracks those in flight."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    @staticmethod
    def _template(scope: Scope) -> str:
        """The matched route's path template (set on the scope by the router), else ``unmatched``."""
        return getattr(scope.get("route"), "path", None) or "unmatched"

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
