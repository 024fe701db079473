"""A run's history and its outputs: a log line and a JSON line per epoch, the paper-style error curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from service.atomic_file import atomic_write
from training.loop import EpochStats

log = logging.getLogger(__name__)


class Report:
    """The history of a run (saved in its checkpoints) and, when ``write`` (rank 0), the log lines,
    ``metrics.jsonl`` and ``errors.png`` of its run directory."""

    def __init__(self, out: Path, title: str, write: bool) -> None:
        self.out, self.title, self.write = out, title, write
        self.history: list[dict[str, Any]] = []

    def epoch(self, stats: EpochStats, test_error: float | None) -> None:
        record = {
            "epoch": stats.epoch + 1,
            "iteration": stats.iteration,
            "lr": stats.lr,
            "train_loss": round(stats.loss, 5),
            "train_error": round(stats.train_error, 5),
            "test_error": None if test_error is None else round(test_error, 5),
            "images_per_s": round(stats.images_per_s, 1),
            "epoch_time_s": round(stats.seconds, 1),
        }
        self.history.append(record)
        if self.write:
            test_text = "-" if test_error is None else f"{100 * test_error:.2f}%"
            log.info(
                "epoch %d iter %d  train loss %.4f err %.2f%%  test err %s  lr %.4g  %.0f img/s  %.0f s",
                record["epoch"], stats.iteration, stats.loss, 100 * stats.train_error, test_text, stats.lr,
                stats.images_per_s, stats.seconds,
            )  # fmt: skip
            append_metrics(self.out / "metrics.jsonl", record)
            plot_errors(self.history, self.out / "errors.png", self.title)

    def final(self, results: dict[str, Any], iteration: int) -> None:
        """The final evaluation's results, as the last record of the history and of ``metrics.jsonl``."""
        record = {"final": results, "iteration": iteration}
        self.history.append(record)
        if self.write:
            append_metrics(self.out / "metrics.jsonl", record)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def plot_errors(history: list[dict[str, Any]], target: Path, title: str) -> None:
    """Training error (thin) and test error (bold) in % against iterations, as in the paper's Fig. 1/6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in history if "train_error" in r]  # not the "final" record of a run extended later
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    train_errors = [100 * r["train_error"] for r in epochs]
    ax.plot([r["iteration"] for r in epochs], train_errors, lw=1, label="training error")
    tested = [r for r in epochs if r.get("test_error") is not None]
    ax.plot(
        [r["iteration"] for r in tested], [100 * r["test_error"] for r in tested], lw=2.5, label="test error"
    )
    ax.set_xlabel("iteration")
    ax.set_ylabel("error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(target, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)
