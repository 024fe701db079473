"""DistributedDataParallel plumbing for ``torchrun``: NCCL on GPUs, gloo on CPU; a no-op for one process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def setup() -> None:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def rank_zero_first(current_rank: int) -> Iterator[None]:
    """Rank 0 runs the body (e.g. decode and cache data) before the other ranks do."""
    if current_rank != 0:
        barrier()
    yield
    if current_rank == 0:
        barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap ``model`` when several processes train; the plain model otherwise."""
    if not dist.is_initialized():
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
