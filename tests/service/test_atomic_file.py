"""The one atomic write (``service/atomic_file.py``) that checkpoints, exports, reports and the tests use."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from service.atomic_file import atomic_write, atomic_write_bytes


@pytest.fixture
def umask() -> Iterator[int]:
    """A known umask for the test, the process's own put back after it."""
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


def test_the_file_gets_the_umasks_permissions_not_mkstemps(tmp_path: Path, umask: int) -> None:
    target = atomic_write_bytes(tmp_path / "new" / "model.onnx", b"payload")
    assert target == tmp_path / "new" / "model.onnx" and target.read_bytes() == b"payload"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask == 0o640
    assert os.listdir(target.parent) == ["model.onnx"]


def test_a_replaced_file_is_a_new_file_renamed_over_the_old(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "model.onnx", b"old")
    before = target.stat().st_ino
    atomic_write(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new" and target.stat().st_ino != before


@pytest.mark.parametrize("exists", [True, False], ids=["over-a-file", "no-file-yet"])
def test_a_failing_writer_changes_nothing_and_leaves_no_temp_file(tmp_path: Path, exists: bool) -> None:
    target = tmp_path / "model.onnx"
    if exists:
        target.write_bytes(b"good")

    def write(handle: IO[bytes]) -> None:
        handle.write(b"half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, write)
    assert os.listdir(tmp_path) == (["model.onnx"] if exists else [])
    if exists:
        assert target.read_bytes() == b"good"
