"""Checkpoints, written atomically (``service.atomic_file``): a crash or a kill never leaves half of one.

A ``train.py`` checkpoint holds the trainer's state (model, optimizer, scheduler, scaler, iteration), the
run's ``config`` (what defines it), its ``results`` (what it computed: mean/std, and after its final
evaluation resize_size and the test errors), ``classes``, ``history``, ``best_error`` and ``rng``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.atomic_file import atomic_write


def save_checkpoint(state: dict[str, Any], target: Path) -> None:
    atomic_write(target, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # The checkpoint holds RNG states and plain config values besides tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, so that a resumed run continues their sequences."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
