"""Dynamic batching: coalescing, bounds, the full queue, failures, timeouts and draining."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from service.batcher import DynamicBatcher
from service.errors import InferenceFailed, Overloaded


class GatedInfer:
    """Blocking inference that waits for a gate; each output row is the sum of its input row."""

    def __init__(self, fail: bool = False) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.started.set()
        self.gate.wait(timeout=10)
        self.batches.append(len(rows))
        if self.fail:
            raise RuntimeError("boom")
        return rows.reshape(len(rows), -1).sum(axis=1, keepdims=True).astype(np.float32)


def rows(value: int, n: int = 2) -> np.ndarray:
    return np.full((n, 2, 2, 3), value, dtype=np.uint8)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def started(infer: GatedInfer) -> None:
    while not infer.started.is_set():
        await asyncio.sleep(0.005)


def make(
    infer: GatedInfer,
    *,
    max_batch_size: int = 8,
    max_queue_delay_s: float = 0.001,
    max_queue_size: int = 16,
    seconds_per_row: float | None = None,
) -> DynamicBatcher:
    batcher = DynamicBatcher(
        infer,
        max_batch_size=max_batch_size,
        max_queue_delay_s=max_queue_delay_s,
        max_queue_size=max_queue_size,
        seconds_per_row=seconds_per_row,
    )
    batcher.start()
    return batcher


def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    async def scenario() -> None:
        infer = GatedInfer()
        batcher = make(infer)
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await started(infer)  # the first batch is running; the next requests pile up meanwhile
        rest = [asyncio.ensure_future(batcher.submit(rows(v))) for v in (2, 3, 4, 5, 6)]
        await asyncio.sleep(0.02)
        infer.gate.set()
        results = await asyncio.gather(first, *rest)
        assert infer.batches == [2, 8, 2]  # 1 request, then 4 coalesced (8 rows, the maximum), then 1
        for value, result in zip((1, 2, 3, 4, 5, 6), results, strict=True):
            np.testing.assert_array_equal(result.outputs[:, 0], [value * 12, value * 12])
        assert results[1].batch_requests == 4 and results[1].batch_rows == 8
        await batcher.close()

    run(scenario())


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    async def scenario() -> None:
        infer = GatedInfer()
        infer.gate.set()
        batcher = make(infer, max_batch_size=4)
        result = await batcher.submit(rows(1, n=10))
        assert result.outputs.shape == (10, 1) and infer.batches == [10]
        await batcher.close()

    run(scenario())


def test_full_queue_answers_overloaded_at_once() -> None:
    async def scenario() -> None:
        infer = GatedInfer()
        batcher = make(infer, max_queue_size=2)
        running = asyncio.ensure_future(batcher.submit(rows(1)))
        await started(infer)
        queued = [asyncio.ensure_future(batcher.submit(rows(2))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await batcher.submit(rows(3))
        infer.gate.set()
        await asyncio.gather(running, *queued)
        assert (await batcher.submit(rows(4))).outputs.shape == (2, 1)  # serving again
        await batcher.close()

    run(scenario())


def test_a_request_on_an_idle_model_runs_at_once_without_waiting_for_company() -> None:
    async def scenario() -> None:
        infer = GatedInfer()
        infer.gate.set()
        batcher = make(infer, max_queue_delay_s=30.0)
        result = await asyncio.wait_for(batcher.submit(rows(1)), 10)  # not held for the 30 s delay
        assert result.batch_requests == 1 and result.queue_s < 10
        await batcher.close()

    run(scenario())


def test_rows_waiting_for_their_batch_to_fill_are_still_ahead_of_new_requests() -> None:
    async def scenario() -> None:
        infer = GatedInfer()
        batcher = make(infer, max_queue_delay_s=0.5)
        running = asyncio.ensure_future(batcher.submit(rows(1)))
        await started(infer)  # a batch is in flight: the next request waits up to 0.5 s for company
        pending = asyncio.ensure_future(batcher.submit(rows(2)))
        await asyncio.sleep(0.01)
        infer.gate.set()
        await running
        await asyncio.sleep(0.1)  # taken from the queue, waiting for others to join
        assert infer.batches == [2] and batcher.depth == 0
        assert batcher.rows_ahead == 2
        batcher.seconds_per_row = 1.0  # as measured on a slow model
        with pytest.raises(Overloaded, match="cannot answer within"):
            batcher.check_admission(2, budget_s=3.0)  # 4 rows at 1 s each
        await pending
        assert batcher.rows_ahead == 0
        await batcher.close()

    run(scenario())


def test_inference_failure_fails_that_batch_only() -> None:
    async def scenario() -> None:
        infer = GatedInfer(fail=True)
        infer.gate.set()
        batcher = make(infer)
        with pytest.raises(InferenceFailed):
            await batcher.submit(rows(1))
        infer.fail = False
        assert (await batcher.submit(rows(2))).outputs.shape == (2, 1)
        await batcher.close()

    run(scenario())


def test_timed_out_requests_are_skipped_and_close_drains_the_queue() -> None:
    async def scenario() -> None:
        infer = GatedInfer()
        batcher = make(infer)
        running = asyncio.ensure_future(batcher.submit(rows(1)))
        await started(infer)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(rows(2)), 0.01)
        waiting = asyncio.ensure_future(batcher.submit(rows(3)))
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.close())
        infer.gate.set()
        await closing
        assert (await running).outputs.shape == (2, 1)
        assert (await waiting).outputs[0, 0] == 36
        assert infer.batches == [2, 2]  # the timed-out request never reached the session
        with pytest.raises(Overloaded):
            await batcher.submit(rows(4))

    run(scenario())


def test_features_are_fetched_only_for_a_batch_that_asks_and_given_only_to_who_asked() -> None:
    fetched: list[tuple[str, int]] = []

    def logits(batch: np.ndarray) -> np.ndarray:
        fetched.append(("logits", len(batch)))
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True).astype(np.float32)

    def with_features(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fetched.append(("features", len(batch)))
        return logits(batch), batch.astype(np.float32) * 2

    async def scenario() -> None:
        gate = GatedInfer()  # holds a first batch so the next two requests share one
        batcher = DynamicBatcher(
            lambda b: gate(b) if not gate.gate.is_set() else logits(b),
            max_batch_size=8,
            max_queue_delay_s=0.001,
            max_queue_size=16,
            infer_features=with_features,
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await started(gate)
        plain = asyncio.ensure_future(batcher.submit(rows(2)))
        asked = asyncio.ensure_future(batcher.submit(rows(3, n=1), features=True))
        await asyncio.sleep(0.05)
        gate.gate.set()
        await first
        plain_result, asked_result = await plain, await asked
        assert first.result().features is None
        assert plain_result.features is None and plain_result.outputs[:, 0].tolist() == [24.0, 24.0]
        assert asked_result.features is not None and asked_result.features.shape == (1, 2, 2, 3)
        assert (asked_result.features == 6).all() and asked_result.outputs[:, 0].tolist() == [36.0]
        alone = await batcher.submit(rows(4))
        assert alone.features is None
        await batcher.close()

    fetched.clear()
    run(scenario())
    # the first (gated) batch ran logits only, the shared one with features, the last logits only again
    assert [kind for kind, _ in fetched if kind == "features"] == ["features"]
    assert ("features", 3) in fetched and fetched[-1] == ("logits", 2)


def test_features_cannot_be_asked_of_a_batcher_without_them() -> None:
    async def scenario() -> None:
        batcher = make(GatedInfer())
        assert not batcher.has_features
        with pytest.raises(ValueError, match="no feature output"):
            await batcher.submit(rows(1), features=True)
        await batcher.close()

    run(scenario())
