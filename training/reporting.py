"""Run-directory outputs: one JSON line per epoch and the paper-style error curves as a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.checkpoint import atomic_write


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
