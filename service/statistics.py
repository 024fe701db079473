"""Per-model inference statistics in the shape of Triton's statistics extension.

Fed at the same points as the Prometheus metrics (``service/metrics.py``): each image answered or failed
(``success`` / ``fail``), each batch run (``queue``, ``compute_infer``, ``batch_stats``). Counters only grow,
in nanoseconds, as the extension defines them; they live as long as the process, like the Prometheus series.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000_000


@dataclass
class Duration:
    """A count and the cumulative nanoseconds of what it counts."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * NS)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelCounters:
    """One model's counters; an image is one inference, a session run one execution."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)  # images per run -> runs and their time


class InferenceStatistics:
    """The counters of every model; written from the event loop and the inference threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelCounters] = {}

    def _counters(self, model: str) -> ModelCounters:
        return self._models.setdefault(model, ModelCounters())

    def image_done(self, model: str, seconds: float, ok: bool) -> None:
        """One image answered (``ok``) or failed after ``seconds`` in the service."""
        with self._lock:
            counters = self._counters(model)
            (counters.success if ok else counters.fail).add(seconds)

    def batch_done(self, model: str, requests: int, queue_waits: list[float], inference_s: float) -> None:
        """One session run of ``requests`` images: each image waited, then shared the run's time."""
        with self._lock:
            counters = self._counters(model)
            counters.execution_count += 1
            counters.inference_count += requests
            counters.last_inference_ms = int(time.time() * 1000)
            for wait in queue_waits:
                counters.queue.add(wait)
            counters.compute_infer.add(inference_s * requests, requests)
            counters.batches.setdefault(requests, Duration()).add(inference_s)

    def model(self, name: str, version: str) -> dict[str, Any]:
        """The extension's ``ModelStatistics`` of ``name`` (zeros before its first request)."""
        with self._lock:
            c = self._models.get(name) or ModelCounters()
            zero = Duration().as_dict()
            return {
                "name": name,
                "version": version,
                "last_inference": c.last_inference_ms,
                "inference_count": c.inference_count,
                "execution_count": c.execution_count,
                "inference_stats": {
                    "success": c.success.as_dict(),
                    "fail": c.fail.as_dict(),
                    "queue": c.queue.as_dict(),
                    "compute_input": zero,
                    "compute_infer": c.compute_infer.as_dict(),
                    "compute_output": zero,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": zero,
                        "compute_infer": runs.as_dict(),
                        "compute_output": zero,
                    }
                    for size, runs in sorted(c.batches.items())
                ],
            }
