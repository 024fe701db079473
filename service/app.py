"""The FastAPI application: routers, middleware, error handlers and the service lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.http_errors import install_error_handlers
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.routers import admin, classify, health, metrics, models, v2
from service.settings import Settings
from service.state import ServiceState
from service.v2_protocol import HEADER_LENGTH

DESCRIPTION = """Classifies images with the ResNets of He et al. (2015) exported to ONNX.

`curl -F image=@cat.jpg localhost:8000/classify` returns the top-5 classes of the paper's
10-crop testing. Models are the `*.onnx` files of the models directory, hot-reloaded.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; models load in the background once it starts (see ``/readyz``)."""
    settings = settings or Settings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        grpc_server = None
        try:
            if settings.grpc_port:
                from service.grpc_server import start_grpc_server  # grpc is loaded only when it serves

                grpc_server = await start_grpc_server(state)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=settings.request_timeout_s)
            await state.stop()

    app = FastAPI(
        title="ResNet image classification", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.service = state
    install_error_handlers(app)
    routers = [
        health.router,
        models.router,
        classify.router,
        v2.router,
        admin.router,
        metrics.router,
    ]
    for router in routers:
        app.include_router(router)
    from service.routers import ui  # the web page at GET /

    app.include_router(ui.router)

    # Added last = outermost: metrics see every answer, CORS headers reach the 413s too.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        budget=state.upload_budget,
        retry_after_s=settings.retry_after_s,
    )
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", HEADER_LENGTH],
            expose_headers=["Retry-After", HEADER_LENGTH],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
