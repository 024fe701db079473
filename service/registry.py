"""The served models: loading, checking, warming up and atomically swapping versions.

Every ``*.onnx`` file in the models directory is one model named after its stem. A new or changed
file is loaded off the event loop; only a version that passed the contract checks and a warm-up
run replaces the one serving (a single reference swap on the event loop). Requests hold the version
they started with until they finish; the old version is closed when its last request is done. A
broken file leaves the old version serving and is reported in ``/models``, the log and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service.batcher import DynamicBatcher
from service.errors import ModelNotFound, ServiceUnavailable
from service.metrics import Metrics
from service.model_metadata import InvalidModelError, ModelMetadata, read_model_metadata
from service.runtime import create_session
from service.settings import Settings

log = logging.getLogger(__name__)

PREFERRED_DEFAULT = "resnet20-cifar10"


class ModelState(str, Enum):
    """What a model file is doing; only ``ready`` models answer requests."""

    LOADING = "loading"
    READY = "ready"
    REFUSED = "refused"  # breaks the model contract
    FAILED = "failed"  # ONNX Runtime could not load or run it


class FileSignature(NamedTuple):
    """Identifies one version of a file: an atomic rename changes the inode, an edit mtime/size."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileSignature:
        stat = path.stat()
        return cls(stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class LoadedModel:
    """One warmed-up version of a model, with its session and batcher."""

    name: str
    path: Path
    metadata: ModelMetadata
    session: Any  # onnxruntime.InferenceSession (or a stand-in in tests)
    providers: list[str]
    input_name: str
    output_name: str
    loaded_at: datetime = field(default_factory=_now)
    batcher: DynamicBatcher | None = None
    seconds_per_row: float | None = None  # measured by the warm-up; admission's first estimate
    users: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def infer(self, rows: np.ndarray) -> np.ndarray:
        """Blocking session run: uint8 rows in, float32 logits out."""
        return np.asarray(self.session.run([self.output_name], {self.input_name: rows})[0])

    @property
    def provider(self) -> str:
        return self.providers[0] if self.providers else "unknown"


@dataclass
class ModelEntry:
    """Everything ``/models`` says about one file, including the version serving it."""

    name: str
    path: Path
    state: ModelState = ModelState.LOADING
    current: LoadedModel | None = None
    error: str | None = None
    loading: bool = False
    signature: FileSignature | None = None
    updated_at: datetime = field(default_factory=_now)


@dataclass
class ScanReport:
    """What one rescan of the models directory changed."""

    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)


def list_model_files(directory: Path) -> dict[str, tuple[Path, FileSignature]]:
    """``{name: (path, signature)}`` of the ``*.onnx`` files (hidden and temporary files skipped)."""
    found: dict[str, tuple[Path, FileSignature]] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.onnx")):
        if path.name.startswith("."):
            continue
        try:
            if path.is_file():
                found[path.stem] = (path, FileSignature.of(path))
        except OSError:  # vanished between glob and stat: the next event rescans
            continue
    return found


class ModelRegistry:
    """Loads the models directory and hands requests the version currently serving."""

    def __init__(self, settings: Settings, metrics: Metrics, infer_executor: Executor | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._executor = infer_executor
        self._entries: dict[str, ModelEntry] = {}
        self._scan_lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()

    # ---- queries -------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        return [self._entries[name] for name in sorted(self._entries)]

    def entry(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def ready_names(self) -> list[str]:
        return [e.name for e in self.entries() if e.current is not None]

    def default_name(self) -> str | None:
        """The configured default, else resnet20-cifar10 if it serves, else the first ready model."""
        if self.settings.default_model:
            return self.settings.default_model
        ready = self.ready_names()
        if PREFERRED_DEFAULT in ready:
            return PREFERRED_DEFAULT
        return ready[0] if ready else None

    def resolve(self, name: str | None) -> LoadedModel:
        """The version serving ``name`` (default model when None); 404/503 errors otherwise."""
        wanted = name or self.default_name()
        if wanted is None:
            raise ServiceUnavailable("no model is ready yet")
        entry = self._entries.get(wanted)
        if entry is None:
            served = ", ".join(self.ready_names()) or "none"
            raise ModelNotFound(f"unknown model {wanted!r} (served: {served})")
        if entry.current is not None:
            return entry.current
        if entry.state is ModelState.LOADING:
            raise ServiceUnavailable(f"model {wanted!r} is still loading")
        raise ModelNotFound(f"model {wanted!r} is not served: {entry.error}")

    @asynccontextmanager
    async def use(self, name: str | None) -> AsyncIterator[LoadedModel]:
        """Hold the serving version of ``name`` for the duration of a request."""
        model = self.resolve(name)
        model.users += 1
        model.idle.clear()
        try:
            yield model
        finally:
            model.users -= 1
            if model.users == 0:
                model.idle.set()

    # ---- loading -------------------------------------------------------------------------
    async def scan(self) -> ScanReport:
        """Load new or changed files, unload removed ones; returns what changed."""
        async with self._scan_lock:
            directory = self.settings.models_dir
            files = await asyncio.to_thread(list_model_files, directory)
            if not files and not directory.is_dir():
                log.warning("models directory %s does not exist: no model to serve", directory)
            report = ScanReport()
            for name in sorted(set(self._entries) - set(files)):
                self._unload(name, f"{self._entries[name].path} was removed")
                report.unloaded.append(name)
            for name, (path, signature) in files.items():
                entry = self._entries.get(name)
                if entry is not None and entry.signature == signature:
                    report.unchanged.append(name)
                    continue
                error = await self._load(name, path, signature)
                if error is None:
                    report.loaded.append(name)
                else:
                    report.errors[name] = error
            return report

    async def _load(self, name: str, path: Path, signature: FileSignature) -> str | None:
        entry = self._entries.setdefault(name, ModelEntry(name, path))
        entry.signature, entry.loading, entry.path = signature, True, path
        log.info("loading model %s from %s", name, path)
        try:
            model = await asyncio.to_thread(self._load_blocking, name, path)
        except InvalidModelError as exc:
            return self._failed(entry, ModelState.REFUSED, str(exc))
        except Exception as exc:
            log.debug("load of %s failed", path, exc_info=True)
            return self._failed(entry, ModelState.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            entry.loading = False
        self._swap(entry, model)
        return None

    def _load_blocking(self, name: str, path: Path) -> LoadedModel:
        """Read, check and warm up one file (in a worker thread)."""
        s = self.settings
        metadata = read_model_metadata(path)
        session = create_session(
            path,
            s.provider_list,
            s.trt_cache_dir,
            fp16=s.trt_fp16,
            crop_size=metadata.crop_size,
            max_batch_size=s.max_batch_size,
            intra_op_threads=s.intra_op_threads,
        )
        if dict(session.get_modelmeta().custom_metadata_map) != dict(metadata.properties):
            raise RuntimeError(
                "the file changed while it was being loaded; it is loaded again on its next change"
            )
        outputs = [o.name for o in session.get_outputs()]
        model = LoadedModel(
            name=name,
            path=path,
            metadata=metadata,
            session=session,
            providers=list(session.get_providers()),
            input_name=session.get_inputs()[0].name,
            output_name="logits" if "logits" in outputs else outputs[0],
        )
        model.idle.set()
        self._warm_up(model)
        return model

    def _warm_up(self, model: LoadedModel) -> None:
        """Run the shapes traffic will use, so the first request is not slow; check the output width.

        The largest batch runs too: ONNX Runtime's memory arena grows to its high-water mark now, so
        the resident size after loading is what a burst will take (no surprise peak later), and
        TensorRT builds its engine for the whole profile.
        """
        crop = model.metadata.crop_size
        sizes = {1, min(10, self.settings.max_batch_size), self.settings.max_batch_size}
        for n in sorted(sizes):
            started = time.perf_counter()
            logits = model.infer(np.zeros((n, crop, crop, 3), dtype=np.uint8))
            model.seconds_per_row = (time.perf_counter() - started) / n  # the largest batch is last
            if logits.shape != (n, model.metadata.num_classes):
                raise InvalidModelError(
                    f"the model outputs shape {list(logits.shape)} for {n} images, but it has "
                    f"{model.metadata.num_classes} labels"
                )

    def _swap(self, entry: ModelEntry, model: LoadedModel) -> None:
        s = self.settings
        model.batcher = DynamicBatcher(
            model.infer,
            max_batch_size=s.max_batch_size,
            max_queue_delay_s=s.max_queue_delay_s,
            max_queue_size=s.max_queue_size,
            executor=self._executor,
            observer=self.metrics.observer(entry.name),
            name=entry.name,
            seconds_per_row=model.seconds_per_row,
        )
        model.batcher.start()
        old, entry.current = entry.current, model
        entry.state, entry.error, entry.updated_at = ModelState.READY, None, _now()
        if old is not None:
            self._forget_info(old)
            self._retire(old)
        self.metrics.model_loads.labels(entry.name).inc()
        self.metrics.model_info.labels(entry.name, model.metadata.version, model.provider).set(1)
        log.info(
            "model %s version %s ready on %s (%d labels, crop %d, resize %d)%s",
            entry.name,
            model.metadata.version,
            ", ".join(model.providers),
            model.metadata.num_classes,
            model.metadata.crop_size,
            model.metadata.resize_size,
            f", replacing version {old.metadata.version}" if old else "",
        )

    def _failed(self, entry: ModelEntry, state: ModelState, reason: str) -> str:
        entry.error, entry.updated_at = reason, _now()
        self.metrics.model_load_failures.labels(entry.name, state.value).inc()
        if entry.current is not None:
            version = entry.current.metadata.version
            log.error(
                "model %s: new file %s %s: %s; version %s keeps serving",
                *(entry.name, entry.path, state.value, reason, version),
            )
        else:
            entry.state = state
            log.error("model %s %s, not served: %s (%s)", entry.name, state.value, reason, entry.path)
        return reason

    # ---- unloading -----------------------------------------------------------------------
    def _unload(self, name: str, why: str) -> None:
        entry = self._entries.pop(name)
        if entry.current is not None:
            log.info("model %s unloaded: %s", name, why)
            self._forget_info(entry.current)
            self._retire(entry.current)

    def _forget_info(self, model: LoadedModel) -> None:
        with suppress(KeyError):
            self.metrics.model_info.remove(model.name, model.metadata.version, model.provider)

    def _retire(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(model), name=f"retire-{model.name}")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    @staticmethod
    async def _drain(model: LoadedModel) -> None:
        """Let the requests holding ``model`` finish, then stop its batcher and drop its session."""
        await model.idle.wait()
        if model.batcher is not None:
            await model.batcher.close()
        model.session = None

    async def close(self) -> None:
        """Unload everything (at shutdown), letting requests in flight finish."""
        async with self._scan_lock:
            for name in list(self._entries):
                self._unload(name, "the service is stopping")
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
