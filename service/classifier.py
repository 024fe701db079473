"""From an encoded image (or pixels) to averaged class probabilities, with timings.

Decoding and cropping run in a thread pool (Pillow and numpy release the GIL), the crops go
through the model's dynamic batcher, and the softmax is averaged over the crops (10-crop testing).
With :class:`Explain`, the batcher also returns the crops' feature maps and the class activation maps
(``service.cam``) are computed in the same pool, off the event loop; without it nothing more is fetched.
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
from service.cam import Heatmap, heatmap
from service.cam import explain as explain_maps
from service.crop_geometry import crop_windows, resized_size
from service.errors import ExplanationUnavailable, InvalidParameter, Overloaded, RequestTimeout
from service.metrics import Metrics
from service.preprocess import CROP_COUNTS, make_crops, preprocess_sized, softmax
from service.registry import LoadedModel
from service.schemas import Prediction
from service.settings import Settings

# Most classes one image's explanation may name (each is a map to compute and a PNG to send).
MAX_EXPLAIN_CLASSES = 10
NOT_EXPLAINABLE = "explanations not available for this model"
# Rows cut from an image, and the (width, height) of the resized image they were cut from.
Prepared = tuple[np.ndarray, tuple[int, int]]


@dataclass
class Timings:
    """Seconds spent in each stage of one image."""

    decode_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0
    explain_s: float | None = None  # only when maps were asked for

    def as_ms(self) -> dict[str, float]:
        ms = {
            "decode_ms": round(self.decode_s * 1000, 3),
            "queue_ms": round(self.queue_s * 1000, 3),
            "inference_ms": round(self.inference_s * 1000, 3),
        }
        if self.explain_s is not None:
            ms["explain_ms"] = round(self.explain_s * 1000, 3)
        return {**ms, "total_ms": round(self.total_s * 1000, 3)}


@dataclass(frozen=True)
class Explain:
    """Class activation maps asked for: of ``classes`` (indices, from :func:`explain_classes`), or of the
    top-1 class when None."""

    classes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Explanation:
    """The map of one class over the image."""

    index: int
    heatmap: Heatmap


@dataclass
class ImageResult:
    """Class probabilities of one image (mean softmax over its crops), and its maps when asked for."""

    probabilities: np.ndarray
    crops: int
    timings: Timings
    explanations: list[Explanation] | None = None


def check_crops(crops: object) -> int:
    """``crops`` as an int if it is 1 or 10; :class:`InvalidParameter` (422) otherwise."""
    if not isinstance(crops, int) or isinstance(crops, bool) or crops not in CROP_COUNTS:
        raise InvalidParameter(f"crops must be 1 or 10, not {crops!r}")
    return crops


def check_explainable(model: LoadedModel) -> None:
    """:class:`ExplanationUnavailable` (422) unless ``model`` has a feature output and its cam weights."""
    if model.cam_weights is None or not model.batcher.has_features:
        raise ExplanationUnavailable(
            f"{NOT_EXPLAINABLE} ({model.name}): it has no feature output; export it again with "
            "training/export.py or training/import_resnet50.py (feature output on by default)"
        )


def explain_classes(names: list[str], labels: tuple[str, ...]) -> tuple[int, ...]:
    """Class indices from ``names`` (labels of the model, or indices); :class:`InvalidParameter` (422) on
    an unknown class, a repeated one or more than ``MAX_EXPLAIN_CLASSES``."""
    if len(names) > MAX_EXPLAIN_CLASSES:
        raise InvalidParameter(
            f"explain_class may name at most {MAX_EXPLAIN_CLASSES} classes, not {len(names)}"
        )
    where = {label: i for i, label in enumerate(labels)}
    indices: list[int] = []
    for name in names:
        index = where.get(name)
        if index is None and name.strip().isdigit() and int(name) < len(labels):
            index = int(name)
        if index is None:
            raise InvalidParameter(
                f"explain_class {name!r} is neither a label of this model nor an index below {len(labels)}"
            )
        if index in indices:
            raise InvalidParameter(f"explain_class names class {labels[index]!r} twice")
        indices.append(index)
    return tuple(indices)


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
        self,
        model: LoadedModel,
        data: bytes,
        crops: int,
        *,
        timeout_s: float | None = None,
        explain: Explain | None = None,
    ) -> ImageResult:
        """Decode ``data``, take ``crops`` (1 or 10) crops and classify them (and explain, if asked)."""
        meta = model.metadata

        def prepare() -> Prepared:
            return preprocess_sized(
                data,
                resize_size=meta.resize_size,
                crop_size=meta.crop_size,
                crops=crops,
                max_pixels=self.settings.max_image_pixels,
                max_resized_pixels=self.settings.max_resized_pixels,
            )

        return await self._timed(model, prepare, crops, timeout_s, explain)

    async def classify_pixels(
        self, model: LoadedModel, pixels: np.ndarray, crops: int, *, timeout_s: float | None = None
    ) -> ImageResult:
        """Classify one decoded RGB image ``[H, W, 3]``; a ``crop_size`` square is fed as it is."""
        meta = model.metadata
        square = (meta.crop_size, meta.crop_size)
        if pixels.shape[:2] == square:
            return await self._timed(
                model, lambda: (np.ascontiguousarray(pixels[None]), square), 1, timeout_s
            )

        def prepare() -> Prepared:
            image = Image.fromarray(pixels, "RGB")
            limit = self.settings.max_resized_pixels
            rows = make_crops(image, meta.resize_size, meta.crop_size, crops, max_resized_pixels=limit)
            return rows, resized_size(image.width, image.height, meta.resize_size)

        return await self._timed(model, prepare, crops, timeout_s)

    async def _timed(
        self,
        model: LoadedModel,
        prepare: Callable[[], Prepared],
        rows: int,
        timeout_s: float | None,
        explain: Explain | None = None,
    ) -> ImageResult:
        if explain is not None:
            check_explainable(model)
        timeout = self.deadline_s(timeout_s)
        started, ok = time.perf_counter(), False
        try:
            # 503 now, not 504 later
            reservation = model.batcher.reserve(rows, timeout * ADMISSION_HEADROOM)
            try:
                result = await asyncio.wait_for(self._run(model, prepare, reservation, explain), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"no answer within {timeout:g} s; retry later or with crops=1") from None
            finally:
                reservation.release()  # a bad image or a timeout before queueing; no-op once queued
            ok = True
            return result
        finally:
            self.metrics.statistics.image_done(model.name, time.perf_counter() - started, ok)

    async def _prepare(self, prepare: Callable[[], Prepared]) -> Prepared:
        """Run ``prepare`` in the decode pool; 503 at once when too many images already wait for it."""
        if self._decoding >= self.settings.max_queue_size:
            raise Overloaded("too many images are waiting to be decoded; retry shortly")
        self._decoding += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, prepare)
        finally:
            self._decoding -= 1

    async def _run(
        self,
        model: LoadedModel,
        prepare: Callable[[], Prepared],
        reservation: Reservation,
        explain: Explain | None,
    ) -> ImageResult:
        started = time.perf_counter()
        rows, resized = await self._prepare(prepare)
        decoded = time.perf_counter()
        self.metrics.preprocess_duration.labels(model.name).observe(decoded - started)
        result = await model.batcher.submit(rows, reservation, features=explain is not None)
        probabilities = softmax(result.outputs).mean(axis=0)
        top = int(np.argmax(probabilities))
        self.metrics.predictions.labels(model.name, model.metadata.labels[top]).inc()
        timings = Timings(decode_s=decoded - started, queue_s=result.queue_s, inference_s=result.inference_s)
        explanations = None
        if explain is not None:
            mapped = time.perf_counter()
            features, weights = result.features, model.cam_weights
            assert features is not None and weights is not None  # check_explainable, and asked for
            indices = explain.classes or (top,)
            crop = model.metadata.crop_size
            windows = crop_windows(*resized, crop, len(rows))

            def maps() -> list[Explanation]:
                found = explain_maps(features, weights, indices, windows, resized, crop)
                return [Explanation(m.index, heatmap(m.values)) for m in found]

            explanations = await asyncio.get_running_loop().run_in_executor(self._executor, maps)
            timings.explain_s = time.perf_counter() - mapped
            self.metrics.explain_duration.labels(model.name).observe(timings.explain_s)
        timings.total_s = time.perf_counter() - started
        return ImageResult(probabilities, len(rows), timings, explanations)
