"""Watches the models directory and triggers a rescan when a ``*.onnx`` file appears, changes or goes.

The exporter writes a temporary file and renames it over the target, so a rescan never sees a
half-written model; temporary names do not end in ``.onnx`` and are ignored here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger(__name__)

RETRY_S = 1.0


def is_model_file(change: Change, path: str) -> bool:
    """watchfiles filter: only visible ``*.onnx`` files matter."""
    name = Path(path).name
    return name.endswith(".onnx") and not name.startswith(".")


async def watch_models(
    directory: Path,
    rescan: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    debounce_ms: int = 300,
) -> None:
    """Call ``rescan`` after each burst of model file events until ``stop`` is set.

    A directory that does not exist yet is waited for (then scanned), and watcher errors are
    logged and retried, so a running service follows ``train.py --export`` without a restart.
    """
    while not stop.is_set():
        if not directory.is_dir():
            await _sleep_unless_stopped(stop, RETRY_S)
            if directory.is_dir():
                log.info("models directory %s appeared", directory)
                await rescan()
            continue
        try:
            async for _changes in awatch(
                directory, watch_filter=is_model_file, debounce=debounce_ms, stop_event=stop, recursive=False
            ):
                await rescan()
        except Exception:
            log.exception("watching %s failed; retrying", directory)
            await _sleep_unless_stopped(stop, RETRY_S)
        else:
            # awatch also ends when the watched directory is removed: wait for it to come back
            if not stop.is_set():
                await rescan()
                await _sleep_unless_stopped(stop, RETRY_S)


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
