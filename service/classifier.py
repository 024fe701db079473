"""From an encoded image (or pixels) to averaged class probabilities, with timings.

Decoding and cropping run in a thread pool (Pillow and numpy release the GIL), the crops go
through the model's dynamic batcher, and the softmax is averaged over the crops (10-crop testing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.batcher import ADMISSION_HEADROOM, Reservation
from service.errors import InvalidParameter, Overloaded, RequestTimeout
from service.metrics import Metrics
from service.preprocess import CROP_COUNTS, make_crops, preprocess, softmax
from service.registry import LoadedModel
from service.schemas import Prediction
from service.settings import Settings


@dataclass
class Timings:
    """Seconds spent in each stage of one image."""

    decode_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0

    def as_ms(self) -> dict[str, float]:
        return {
            "decode_ms": round(self.decode_s * 1000, 3),
            "queue_ms": round(self.queue_s * 1000, 3),
            "inference_ms": round(self.inference_s * 1000, 3),
            "total_ms": round(self.total_s * 1000, 3),
        }


@dataclass
class ImageResult:
    """Class probabilities of one image (mean softmax over its crops)."""

    probabilities: np.ndarray
    crops: int
    timings: Timings


def check_crops(crops: object) -> int:
    """``crops`` as an int if it is 1 or 10; :class:`InvalidParameter` (422) otherwise."""
    if not isinstance(crops, int) or isinstance(crops, bool) or crops not in CROP_COUNTS:
        raise InvalidParameter(f"crops must be 1 or 10, not {crops!r}")
    return crops


def top_predictions(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[Prediction]:
    """The ``k`` most probable classes, most probable first (ties: lower index first)."""
    k = min(k, len(probabilities))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Prediction(label=labels[i], index=int(i), probability=float(probabilities[i])) for i in order]


class Classifier:
    """Runs the per-image pipeline under the request deadline and records its metrics."""

    def __init__(self, settings: Settings, metrics: Metrics, executor: Executor | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._executor = executor
        self._decoding = 0  # images waiting for or in the decode pool (bounded like the batch queue)

    @property
    def decoding(self) -> int:
        """Images waiting for or being decoded right now."""
        return self._decoding

    def deadline_s(self, timeout_s: float | None) -> float:
        """The time a request may take: the client's ``timeout`` capped by ``SERVE_REQUEST_TIMEOUT_S``."""
        limit = self.settings.request_timeout_s
        return limit if timeout_s is None else min(timeout_s, limit)

    def check_admission(self, model: LoadedModel, rows: int, timeout_s: float | None = None) -> None:
        """503 now if ``rows`` more of ``model`` could not be answered in time; nothing is reserved."""
        model.batcher.check_admission(rows, self.deadline_s(timeout_s) * ADMISSION_HEADROOM)

    async def classify_bytes(
        self, model: LoadedModel, data: bytes, crops: int, *, timeout_s: float | None = None
    ) -> ImageResult:
        """Decode ``data``, take ``crops`` (1 or 10) crops and classify them."""
        meta = model.metadata

        def prepare() -> np.ndarray:
            return preprocess(
                data,
                resize_size=meta.resize_size,
                crop_size=meta.crop_size,
                crops=crops,
                max_pixels=self.settings.max_image_pixels,
                max_resized_pixels=self.settings.max_resized_pixels,
            )

        return await self._timed(model, prepare, crops, timeout_s)

    async def classify_pixels(
        self, model: LoadedModel, pixels: np.ndarray, crops: int, *, timeout_s: float | None = None
    ) -> ImageResult:
        """Classify one decoded RGB image ``[H, W, 3]``; a ``crop_size`` square is fed as it is."""
        meta = model.metadata
        if pixels.shape[:2] == (meta.crop_size, meta.crop_size):
            return await self._timed(model, lambda: np.ascontiguousarray(pixels[None]), 1, timeout_s)

        def prepare() -> np.ndarray:
            image = Image.fromarray(pixels, "RGB")
            limit = self.settings.max_resized_pixels
            return make_crops(image, meta.resize_size, meta.crop_size, crops, max_resized_pixels=limit)

        return await self._timed(model, prepare, crops, timeout_s)

    async def _timed(
        self, model: LoadedModel, prepare: Callable[[], np.ndarray], rows: int, timeout_s: float | None
    ) -> ImageResult:
        timeout = self.deadline_s(timeout_s)
        started, ok = time.perf_counter(), False
        try:
            # 503 now, not 504 later
            reservation = model.batcher.reserve(rows, timeout * ADMISSION_HEADROOM)
            try:
                result = await asyncio.wait_for(self._run(model, prepare, reservation), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"no answer within {timeout:g} s; retry later or with crops=1") from None
            finally:
                reservation.release()  # a bad image or a timeout before queueing; no-op once queued
            ok = True
            return result
        finally:
            self.metrics.statistics.image_done(model.name, time.perf_counter() - started, ok)

    async def _prepare(self, prepare: Callable[[], np.ndarray]) -> np.ndarray:
        """Run ``prepare`` in the decode pool; 503 at once when too many images already wait for it."""
        if self._decoding >= self.settings.max_queue_size:
            raise Overloaded("too many images are waiting to be decoded; retry shortly")
        self._decoding += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, prepare)
        finally:
            self._decoding -= 1

    async def _run(
        self, model: LoadedModel, prepare: Callable[[], np.ndarray], reservation: Reservation
    ) -> ImageResult:
        started = time.perf_counter()
        rows = await self._prepare(prepare)
        decoded = time.perf_counter()
        self.metrics.preprocess_duration.labels(model.name).observe(decoded - started)
        result = await model.batcher.submit(rows, reservation)
        probabilities = softmax(result.outputs).mean(axis=0)
        top = int(np.argmax(probabilities))
        self.metrics.predictions.labels(model.name, model.metadata.labels[top]).inc()
        timings = Timings(
            decode_s=decoded - started,
            queue_s=result.queue_s,
            inference_s=result.inference_s,
            total_s=time.perf_counter() - started,
        )
        return ImageResult(probabilities, len(rows), timings)
