"""The HTTP server: uvicorn, with a cap on open connections and deadlines for reading each request.

uvicorn closes idle keep-alive connections but waits forever for a request that arrives byte by
byte, so a few thousand clients that send half a header hold sockets and memory until the
file-descriptor limit is hit. :class:`GuardedHttpToolsProtocol` closes a connection whose request
line and headers do not arrive within ``header_timeout_s`` (answering 408 when part of them came),
or whose body does not arrive within ``body_timeout_s`` after them, and answers connections beyond
``max_connections`` with a 503 and ``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

# File descriptors beyond the connection cap: model files, the watcher, ONNX Runtime, logs.
SPARE_FILES = 256
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass
class ConnectionGuard:
    """The limits of every connection, and where to count what they close."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    retry_after_s: int
    metrics: Metrics

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> ConnectionGuard:
        return cls(
            settings.max_connections,
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.retry_after_s,
            metrics,
        )

    def over_limit_response(self) -> bytes:
        message = f"more than {self.max_connections} connections are open; retry shortly"
        body = json.dumps({"error": {"code": "overloaded", "message": message}}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"retry-after: {self.retry_after_s}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        return head.encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionGuard` (set by :func:`protocol`)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._partial_head = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.metrics.http_connections_open.inc()
        if len(self.connections) > self.guard.max_connections:
            self.guard.metrics.http_connections_closed.labels("over_limit").inc()
            transport.write(self.guard.over_limit_response())
            transport.close()
            return
        self._arm(self.guard.header_timeout_s, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.metrics.http_connections_open.dec()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._partial_head = True
        if self._deadline is None:  # the next request of a keep-alive connection
            self._arm(self.guard.header_timeout_s, "header_timeout")

    def on_headers_complete(self) -> None:
        self._partial_head = False
        self._disarm()
        super().on_headers_complete()
        self._arm(self.guard.body_timeout_s, "body_timeout")  # until on_message_complete

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, reason: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.guard.metrics.http_connections_closed.labels(reason).inc()
        if reason == "header_timeout" and self._partial_head:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()  # a request waiting for its body sees a disconnect


def protocol(guard: ConnectionGuard) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to ``guard`` (uvicorn instantiates the class itself, per connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft limit on open files towards ``needed`` (within the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open-file limit %d is below max_connections + %d: connections may fail before the cap",
            soft,
            SPARE_FILES,
        )
    return soft


def server_config(app: Any, settings: Settings, metrics: Metrics, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with the connection limits of ``settings``."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "proxy_headers": True,
        "http": protocol(ConnectionGuard.from_settings(settings, metrics)),
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(app: Any, settings: Settings, metrics: Metrics) -> None:
    """Run ``app`` until interrupted, with the connection limits of ``settings``."""
    raise_open_file_limit(settings.max_connections + SPARE_FILES)
    uvicorn.Server(server_config(app, settings, metrics)).run()
