"""From a model file to a served model: contract check, session, warm-up and a running batcher.

:meth:`ModelLoader.load` returns a complete :class:`LoadedModel` or raises: a file that breaks the contract
raises :class:`~service.model_contract.InvalidModelError`, one ONNX Runtime cannot load or run raises what it
raised. The registry (``service.registry``) only decides which version serves and drains the ones replaced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from service.batcher import DynamicBatcher, Infer, InferFeatures
from service.metrics import Metrics
from service.model_contract import (
    InvalidModelError,
    ModelMetadata,
    cam_weights,
    load_model,
    metadata_from_model,
)
from service.runtime import arena_shrinking_run_options, create_session
from service.settings import Settings

# (model name, blocking inference, its twin with features or None, measured seconds per row) -> a batcher
StartBatcher = Callable[[str, Infer, InferFeatures | None, float], DynamicBatcher]
# ONNX Runtime's CPU arena keeps the largest working set any mix of batch sizes has needed: on ResNet-50,
# three bursts of 16 concurrent 10-crop images left it about 380 MB above the warmed-up size for good.
# A run with arena shrinkage gives that back but costs a few per cent (measured on 2 cores: 2% at 60
# rows, 8% at 10), so only a run with nothing queued behind it (a burst's last, or a quiet one) shrinks,
# at most once in this many seconds.
ARENA_SHRINK_INTERVAL_S = 5.0


def run_logits(
    session: Any, metadata: ModelMetadata, rows: np.ndarray, run_options: Any = None
) -> np.ndarray:
    """Blocking session run: uint8 rows in, float32 logits out, through the contract's input and output."""
    return np.asarray(session.run([metadata.output_name], {metadata.input_name: rows}, run_options)[0])


def run_with_features(
    session: Any, metadata: ModelMetadata, rows: np.ndarray, run_options: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blocking session run fetching the logits and the feature map (a model with ``cam`` metadata only)."""
    assert metadata.features_output is not None
    names = [metadata.output_name, metadata.features_output]
    logits, features = session.run(names, {metadata.input_name: rows}, run_options)
    return np.asarray(logits), np.asarray(features)


@dataclass(frozen=True)
class WarmSession:
    """A session on a checked file that has run the batch sizes traffic will use."""

    metadata: ModelMetadata
    session: Any  # onnxruntime.InferenceSession
    seconds_per_row: float  # measured at the largest batch; admission's first estimate
    cam_weights: np.ndarray | None = None  # [classes, channels], for a model with ``cam`` metadata


class LoadedModel:
    """One warmed-up version of a model: its session and the running batcher every request goes through.

    Requests hold it (``users``) from start to end; ``idle`` is set whenever none does, so a replaced
    version is closed only after its last request.
    """

    def __init__(self, name: str, path: Path, warm: WarmSession, start_batcher: StartBatcher) -> None:
        self.name = name
        self.path = path
        self.metadata = warm.metadata
        self.session: Any = warm.session  # None once drained
        self.cam_weights = warm.cam_weights  # None: this model cannot explain
        self.providers: list[str] = list(warm.session.get_providers())
        self.loaded_at = datetime.now(timezone.utc)
        self.users = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._shrinking = arena_shrinking_run_options()
        self._last_shrink = -ARENA_SHRINK_INTERVAL_S
        with_features = self.infer_features if self.cam_weights is not None else None
        self.batcher = start_batcher(name, self.infer, with_features, warm.seconds_per_row)

    def _run_options(self) -> Any:
        """Arena-shrinking options for a run with nothing queued behind it (see ARENA_SHRINK_INTERVAL_S)."""
        now = time.monotonic()
        if self.batcher.depth == 0 and now - self._last_shrink >= ARENA_SHRINK_INTERVAL_S:
            self._last_shrink = now
            return self._shrinking
        return None

    def infer(self, rows: np.ndarray) -> np.ndarray:
        """Blocking session run of the session this version holds now: the logits only."""
        return run_logits(self.session, self.metadata, rows, self._run_options())

    def infer_features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blocking session run fetching the logits and the feature map (for class activation maps)."""
        return run_with_features(self.session, self.metadata, rows, self._run_options())

    @property
    def provider(self) -> str:
        return self.providers[0] if self.providers else "unknown"


class ModelLoader:
    """Loads files with the service's settings; batchers run on ``executor`` and report to ``metrics``."""

    def __init__(self, settings: Settings, metrics: Metrics, executor: Executor | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._executor = executor

    async def load(self, name: str, path: Path) -> LoadedModel:
        """Check and warm up ``path`` off the event loop, then start its batcher on it."""
        warm = await asyncio.to_thread(self.warm_up, path)
        return LoadedModel(name, path, warm, self._start_batcher)

    def warm_up(self, path: Path) -> WarmSession:
        """Read and check the file, create its session and run the shapes traffic will use (blocking).

        The largest batch runs too: a model whose largest batch cannot run fails here rather than under
        load, its time per row seeds admission's estimate, and TensorRT builds its engine for the whole
        profile. Every run checks the output width against the labels.
        """
        s = self.settings
        model = load_model(path)
        metadata = metadata_from_model(model)
        weights = cam_weights(model, metadata)
        del model  # the parsed file (ResNet-50: 100 MB); the session holds its own copy
        session = create_session(
            path,
            s.provider_list,
            s.trt_cache_dir,
            fp16=s.trt_fp16,
            input_name=metadata.input_name,
            crop_size=metadata.crop_size,
            max_batch_size=s.max_batch_size,
            intra_op_threads=s.intra_op_threads,
        )
        if dict(session.get_modelmeta().custom_metadata_map) != dict(metadata.properties):
            raise RuntimeError(
                "the file changed while it was being loaded; it is loaded again on its next change"
            )
        crop, seconds_per_row = metadata.crop_size, 0.0
        for n in sorted({1, min(10, s.max_batch_size), s.max_batch_size}):
            started = time.perf_counter()
            logits = run_logits(session, metadata, np.zeros((n, crop, crop, 3), dtype=np.uint8))
            seconds_per_row = (time.perf_counter() - started) / n  # the largest batch is last
            if logits.shape != (n, metadata.num_classes):
                raise InvalidModelError(
                    f"the model outputs shape {list(logits.shape)} for {n} images, but it has "
                    f"{metadata.num_classes} labels"
                )
        if weights is not None:
            _, features = run_with_features(session, metadata, np.zeros((1, crop, crop, 3), dtype=np.uint8))
            if features.ndim != 4 or features.shape[1] != weights.shape[1]:
                raise InvalidModelError(
                    f"the feature output {metadata.features_output!r} has shape {list(features.shape)}; "
                    f"the cam weights need [N, {weights.shape[1]}, h, w]"
                )
        return WarmSession(metadata, session, seconds_per_row, weights)

    def _start_batcher(
        self, name: str, infer: Infer, infer_features: InferFeatures | None, seconds_per_row: float
    ) -> DynamicBatcher:
        s = self.settings
        batcher = DynamicBatcher(
            infer,
            max_batch_size=s.max_batch_size,
            max_queue_delay_s=s.max_queue_delay_s,
            max_queue_size=s.max_queue_size,
            executor=self._executor,
            observer=self.metrics.observer(name),
            name=name,
            seconds_per_row=seconds_per_row,
            infer_features=infer_features,
        )
        batcher.start()
        return batcher
