"""Atomic file writes: a reader sees the old file or the new one, whole; a crash or a kill mid-write
never leaves a half-written file behind.

Models are published this way (``training/export.py``, the tests' ``publish``), so the service's watcher
and registry never load half a model; training writes its checkpoints, data cache and reports the same way.
Torch-free, like the rest of ``service``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    umask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(target: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write via ``write`` into a temp file beside ``target``, fsync it, then rename it over ``target``.

    The file gets the umask's default mode (``mkstemp``'s 0600 would hide a published model from a service
    running as another user). On any failure, ``write``'s included, ``target`` is left as it was and the
    temp file is removed. The temp file's name starts with a dot, so the service never loads it as a model.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(target: Path, payload: bytes) -> Path:
    """:func:`atomic_write` of ``payload``."""
    return atomic_write(target, lambda handle: handle.write(payload))
