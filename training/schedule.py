"""Learning-rate schedules, as multipliers of the base rate per iteration (for ``LambdaLR``)."""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("paper", "cosine", "onecycle")
PAPER_ITERATIONS = 64_000  # CIFAR-10: lr / 10 at 32k and 48k, stop at 64k (Sec. 4.2)


def lr_multiplier(schedule: str, total: int, warmup: int = 0) -> Callable[[int], float]:
    """``schedule`` over ``total`` iterations; the first ``warmup`` iterations run at a tenth of the rate.

    ``paper``: x1, then x0.1 at 50% and x0.01 at 75% of ``total`` (32k/48k of 64k).
    ``cosine``: cosine decay to zero. ``onecycle``: linear ramp over the first 15% from x0.1 to x1, then
    cosine decay to zero (fast schedules for short budgets, e.g. a CPU).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")

    def paper(it: int) -> float:
        return 1.0 if it < total // 2 else 0.1 if it < total * 3 // 4 else 0.01

    def cosine(it: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(it, total) / total))

    def onecycle(it: int) -> float:
        ramp = max(1, int(0.15 * total))
        if it < ramp:
            return 0.1 + 0.9 * it / ramp
        return 0.5 * (1 + math.cos(math.pi * min(it - ramp, total - ramp) / max(1, total - ramp)))

    shape = {"paper": paper, "cosine": cosine, "onecycle": onecycle}[schedule]
    return lambda it: 0.1 if it < warmup else shape(it)
