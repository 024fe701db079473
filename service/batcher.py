"""Dynamic batching: rows from concurrent requests are coalesced into one session run.

A batch closes when it holds ``max_batch_size`` rows or when its oldest request has waited
``max_queue_delay_s``; meanwhile the previous batch runs, so under load batches fill up by
themselves. A request that arrives while the model is idle is not held back at all: it runs at once
with whatever is already queued, so a lone client pays no queue delay. The queue is bounded: a full
queue raises :class:`Overloaded` (HTTP 503) at once.

Admission knows the deadline: :meth:`DynamicBatcher.reserve` estimates how long rows would wait from
the rows ahead of them and the recently measured session time per row, and refuses at once (503
with a ``Retry-After`` from that estimate) what could not be answered in time, instead of queueing
it for a late timeout. Rows are reserved before their image is decoded, so decoding counts too. The
time per row is measured on the wall clock from batch to batch (gathering included), so it is the
rate the queue really drains at, also when decoding or HTTP work competes for the CPU. The
``Retry-After`` is the time the admitted work needs to drain: refused clients come back spread
over that drain rather than all within a second, which would spend the CPU on refusing them again.
The batcher knows nothing of HTTP or ONNX: it takes any blocking ``infer(rows) -> outputs``, and
optionally ``infer_features(rows) -> (outputs, features)``, run instead for a batch in which some request
asked for features (class activation maps); a batch in which none did fetches the outputs alone, so
requests that do not ask cost nothing extra.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import InferenceFailed, Overloaded

log = logging.getLogger(__name__)


class BatchObserver(Protocol):
    """Receives what the batcher measures (the service feeds Prometheus with it)."""

    def batch_done(self, rows: int, requests: int, queue_waits: list[float], inference_s: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


@dataclass
class BatchResult:
    """One request's share of a batch, and how long it waited and ran."""

    outputs: np.ndarray
    queue_s: float
    inference_s: float
    batch_rows: int
    batch_requests: int
    features: np.ndarray | None = None  # this request's rows of the feature output, when it asked


Infer = Callable[[np.ndarray], np.ndarray]
InferFeatures = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Item:
    rows: np.ndarray
    future: asyncio.Future[BatchResult]
    features: bool = False
    enqueued: float = field(default_factory=time.perf_counter)


class Reservation:
    """Rows admitted by :meth:`DynamicBatcher.reserve` and not queued yet; released exactly once."""

    def __init__(self, batcher: DynamicBatcher, rows: int) -> None:
        self._batcher: DynamicBatcher | None = batcher
        self.rows = rows

    def release(self) -> None:
        """Stop counting these rows (they were queued, or will never be); later calls do nothing."""
        if self._batcher is not None:
            self._batcher._unreserve(self.rows)
            self._batcher = None


_STOP = object()
# Share of the deadline that the batching queue's expected wait may take at admission; the rest
# covers decoding and the estimate's error, so an admitted request is answered, not timed out.
# (At 0.9, 3 of 108 admitted requests still overran 30 s under 300 clients in bench/stress.py.)
ADMISSION_HEADROOM = 0.8
# Weight of the newest batch in the moving average of seconds per row.
RATE_SMOOTHING = 0.3


class DynamicBatcher:
    """Coalesces ``submit`` calls into batches for one blocking inference function."""

    def __init__(
        self,
        infer: Infer,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
        name: str = "model",
        seconds_per_row: float | None = None,
        infer_features: InferFeatures | None = None,
    ) -> None:
        self._infer = infer
        self._infer_features = infer_features
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self._queue: asyncio.Queue[_Item | object] = asyncio.Queue(maxsize=max_queue_size)
        self._executor = executor
        self._observer = observer
        self._name = name
        self._carry: _Item | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.seconds_per_row = seconds_per_row  # moving average of the session time per row
        self._rows_reserved = 0  # admitted, still decoding
        self._rows_waiting = 0  # in the queue (or carried to the next batch)
        self._rows_running = 0  # in the batch being gathered or run now
        self._last_end = 0.0  # when the previous batch was answered

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize() + (self._carry is not None)

    @property
    def rows_ahead(self) -> int:
        """Rows admitted and not answered yet: decoding, queued or running."""
        return self._rows_reserved + self._rows_waiting + self._rows_running

    def expected_wait_s(self, rows: int) -> float | None:
        """Seconds until ``rows`` more would be answered at the measured rate (None: not measured yet)."""
        if self.seconds_per_row is None:
            return None
        return (self.rows_ahead + rows) * self.seconds_per_row

    def check_admission(self, rows: int, budget_s: float) -> None:
        """Raise :class:`Overloaded` at once unless ``rows`` more could be answered within ``budget_s``.

        The error's ``retry_after`` is how long the work already admitted needs to drain. Routes call
        this before reading an upload, so a refusal costs no body read.
        """
        if self._closed or self._task is None:
            raise Overloaded(f"model {self._name} is being unloaded")
        wait = self.expected_wait_s(rows)
        # With nothing ahead, refusing cannot make the answer sooner, and answering re-measures the
        # rate (else one slow batch could keep an idle model refusing everything).
        if wait is not None and wait > budget_s and self.rows_ahead:
            assert self.seconds_per_row is not None
            retry_after = max(1, math.ceil(self.rows_ahead * self.seconds_per_row))
            raise Overloaded(
                f"model {self._name} cannot answer within {budget_s:.3g} s: about {wait:.3g} s of work "
                f"is ahead of this request; retry after {retry_after} s",
                retry_after=retry_after,
            )

    def reserve(self, rows: int, budget_s: float) -> Reservation:
        """Admit ``rows`` that must be answered within ``budget_s`` (see :meth:`check_admission`).

        The reservation is handed to :meth:`submit`, or released when its rows will never come.
        """
        self.check_admission(rows, budget_s)
        self._rows_reserved += rows
        return Reservation(self, rows)

    def _unreserve(self, rows: int) -> None:
        self._rows_reserved -= rows

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self._name}")

    @property
    def has_features(self) -> bool:
        """Whether :meth:`submit` can be asked for features."""
        return self._infer_features is not None

    async def submit(
        self, rows: np.ndarray, reservation: Reservation | None = None, *, features: bool = False
    ) -> BatchResult:
        """Queue ``rows`` (one request's crops) and wait for their outputs (and features, if asked).

        ``reservation``: what :meth:`reserve` admitted this request with; the queue counts the rows now.
        """
        if reservation is not None:
            reservation.release()
        if features and self._infer_features is None:
            raise ValueError(f"model {self._name} has no feature output")
        if self._closed or self._task is None:
            raise Overloaded(f"model {self._name} is being unloaded")
        item = _Item(rows, asyncio.get_running_loop().create_future(), features)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Overloaded(f"queue of model {self._name} is full; retry shortly") from None
        self._rows_waiting += len(rows)
        self._report_depth()
        return await item.future

    async def close(self) -> None:
        """Finish everything already queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            await self._queue.put(_STOP)
            await self._task

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.depth)

    async def _next(self, timeout: float | None) -> _Item | object | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _gather(self) -> tuple[list[_Item], bool]:
        """The next batch, and whether the stop marker was reached."""
        batch: list[_Item] = []
        rows = 0
        deadline: float | None = None
        while rows < self.max_batch_size:
            timeout = None if deadline is None else deadline - time.perf_counter()
            item = await self._next(timeout)
            if item is None:
                break
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Item)
            if item.future.done():  # cancelled by a timeout while it waited
                self._rows_waiting -= len(item.rows)
                continue
            if batch and rows + len(item.rows) > self.max_batch_size:
                self._carry = item
                break
            # Counted as running from here on: while the batch waits for others to join, its rows
            # are still ahead of every new request.
            self._rows_waiting -= len(item.rows)
            self._rows_running += len(item.rows)
            batch.append(item)
            rows += len(item.rows)
            if deadline is None:
                # Waiting for company only pays while a batch is in flight: a request that arrived with
                # the model idle goes at once, with whatever is already queued behind it.
                idle = item.enqueued >= self._last_end
                deadline = time.perf_counter() if idle else item.enqueued + self.max_queue_delay_s
        return batch, False

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            batch, stop = await self._gather()
            self._report_depth()
            if batch:
                await self._run(loop, batch)

    def _measured(self, seconds_per_row: float) -> None:
        if self.seconds_per_row is None:
            self.seconds_per_row = seconds_per_row
        else:
            self.seconds_per_row += RATE_SMOOTHING * (seconds_per_row - self.seconds_per_row)

    def _infer_parts(self, parts: list[np.ndarray], features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Concatenate and run, in the executor thread: the copy stays off the event loop."""
        rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if features and self._infer_features is not None:
            return self._infer_features(rows)
        return self._infer(rows), None

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        rows = sum(len(item.rows) for item in batch)
        wanted = any(item.features for item in batch)
        try:
            outputs, features = await loop.run_in_executor(
                self._executor, self._infer_parts, [i.rows for i in batch], wanted
            )
        except Exception:
            log.exception("inference failed for model %s on a batch of %d rows", self._name, rows)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed("inference failed; see the service log"))
            return
        finally:
            self._rows_running = 0
        ended = time.perf_counter()
        inference_s = ended - started
        # Back to back, a batch's cycle starts when the previous one ended; after an idle spell,
        # when its first request arrived.
        cycle_start = max(self._last_end, min(item.enqueued for item in batch))
        self._last_end = ended
        self._measured((ended - cycle_start) / rows)
        waits = [started - item.enqueued for item in batch]
        if self._observer is not None:
            self._observer.batch_done(rows, len(batch), waits, inference_s)
        offset = 0
        for item, wait in zip(batch, waits, strict=True):
            n = len(item.rows)
            if not item.future.done():
                own = features[offset : offset + n] if features is not None and item.features else None
                item.future.set_result(
                    BatchResult(outputs[offset : offset + n], wait, inference_s, rows, len(batch), own)
                )
            offset += n
