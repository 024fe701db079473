"""ONNX Runtime sessions with the provider fallback TensorRT (FP16) -> CUDA -> CPU.

GPU providers are asked for only when a CUDA device is really there, so a machine without a GPU
gets a CPU session and one warning instead of ONNX Runtime's error banners.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.settings import PROVIDER_ALIASES

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})


def normalize_providers(providers: list[str]) -> list[str]:
    """Map short names (tensorrt, cuda, cpu) to ONNX Runtime names; keep order, drop duplicates."""
    names = [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in providers if p.strip()]
    return list(dict.fromkeys(names))


@functools.cache
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver or GPU)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def usable_providers(requested: list[str]) -> list[str]:
    """The requested providers this build and machine can run, CPU always last as a fallback."""
    available = set(ort.get_available_providers())
    wanted = normalize_providers(requested)
    usable = [p for p in wanted if p in available]
    if any(p in GPU_PROVIDERS for p in usable) and cuda_device_count() == 0:
        usable = [p for p in usable if p not in GPU_PROVIDERS]
    skipped = [p for p in wanted if p not in usable]
    if CPU not in usable:
        usable.append(CPU)
    if skipped:
        _warn_once(tuple(skipped))
    return usable


@functools.cache
def _warn_once(skipped: tuple[str, ...]) -> None:
    """One warning per process and set of missing providers (not one per model load)."""
    if any(p in GPU_PROVIDERS for p in skipped):
        log.warning("no usable GPU (providers %s unavailable here): running on CPU", ", ".join(skipped))
    else:
        log.warning("providers %s are not available in this ONNX Runtime build", ", ".join(skipped))


def _writable_dir(path: Path) -> Path | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("TensorRT cache directory %s is not writable (%s): engines are not cached", path, exc)
        return None
    return path if os.access(path, os.W_OK) else None


def tensorrt_options(
    cache_dir: Path | None,
    *,
    fp16: bool,
    input_name: str,
    crop_size: int | None,
    max_batch_size: int | None,
) -> dict[str, Any]:
    """TensorRT EP options: FP16, an engine cache, and one optimisation profile for all batch sizes."""
    options: dict[str, Any] = {"trt_fp16_enable": fp16}
    if cache_dir is not None:
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache_dir),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(cache_dir),
        )
    if crop_size and max_batch_size:
        shape = f"x{crop_size}x{crop_size}x3"
        options.update(
            trt_profile_min_shapes=f"{input_name}:1{shape}",
            trt_profile_opt_shapes=f"{input_name}:{min(10, max_batch_size)}{shape}",
            trt_profile_max_shapes=f"{input_name}:{max_batch_size}{shape}",
        )
    return options


def create_session(
    path: str | os.PathLike[str],
    providers: list[str],
    trt_cache_dir: str | os.PathLike[str] | None,
    *,
    fp16: bool = True,
    input_name: str = "image",
    crop_size: int | None = None,
    max_batch_size: int | None = None,
    intra_op_threads: int = 0,
) -> ort.InferenceSession:
    """An inference session on the best usable provider of ``providers`` (names or tensorrt/cuda/cpu).

    Never fails for lack of a GPU: CPU is always appended. The providers really in use are
    ``session.get_providers()``; they are logged here.
    """
    chosen = usable_providers(providers)
    options: list[dict[str, Any]] = []
    for name in chosen:
        if name == TENSORRT:
            cache = _writable_dir(Path(trt_cache_dir)) if trt_cache_dir else None
            options.append(
                tensorrt_options(
                    cache,
                    fp16=fp16,
                    input_name=input_name,
                    crop_size=crop_size,
                    max_batch_size=max_batch_size,
                )
            )
        else:
            options.append({})
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3  # errors only: provider fallbacks are logged by us
    session_options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(
        os.fspath(path), sess_options=session_options, providers=chosen, provider_options=options
    )
    active = session.get_providers()
    log.info("session for %s runs on %s", os.fspath(path), ", ".join(active))
    return session


def arena_shrinking_run_options() -> ort.RunOptions:
    """Run options that hand the CPU memory arena's unused regions back to the system after the run.

    ONNX Runtime's arena otherwise keeps the largest working set any mix of batch sizes has needed
    for the life of the session.
    """
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options
