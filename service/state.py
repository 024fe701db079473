"""The running service: settings, metrics, models, thread pools and background tasks of one app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request

from service.classifier import Classifier
from service.metrics import Metrics
from service.middleware import UploadBudget
from service.registry import ModelRegistry
from service.settings import Settings
from service.watcher import watch_models

log = logging.getLogger(__name__)

INFERENCE_THREADS = 4  # one batch runs per model at a time; sessions parallelise internally


class ServiceState:
    """Owns everything with a lifetime; :meth:`start` and :meth:`stop` run in the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.upload_budget = UploadBudget(settings.max_upload_bytes_in_flight)
        self.preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_threads or len(os.sched_getaffinity(0)),
            thread_name_prefix="preprocess",
        )
        self.inference_pool = ThreadPoolExecutor(
            max_workers=INFERENCE_THREADS, thread_name_prefix="inference"
        )
        self.registry = ModelRegistry(settings, self.metrics, self.inference_pool)
        self.classifier = Classifier(settings, self.metrics, self.preprocess_pool)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the models in the background (``/readyz`` says when) and start watching the directory."""
        s = self.settings
        log.info(
            "serving %s%s (providers %s, watch %s)",
            s.models_dir.resolve(),
            f" over {s.base_models_dir.resolve()}" if s.base_models_dir else "",
            s.providers,
            "on" if s.watch else "off",
        )
        self._tasks.append(asyncio.create_task(self._rescan(), name="initial-scan"))
        if s.watch:
            watcher = watch_models(s.models_dir, self._rescan, self._stop, debounce_ms=s.watch_debounce_ms)
            self._tasks.append(asyncio.create_task(watcher, name="model-watcher"))

    async def _rescan(self) -> None:
        try:
            await self.registry.scan()
        except Exception:
            log.exception("scanning %s failed", self.settings.models_dir)
        default = self.settings.default_model
        if default and self.registry.entry(default) is None:
            log.warning(
                "default model %r is not in %s: requests must name a model", default, self.settings.models_dir
            )

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.registry.close()
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self.inference_pool.shutdown(wait=False, cancel_futures=True)


async def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: the state of the app serving ``request``.

    ``async`` so that FastAPI calls it on the event loop: a plain ``def`` dependency costs every request a
    round trip through a worker thread."""
    state: ServiceState = request.app.state.service
    return state
