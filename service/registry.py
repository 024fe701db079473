"""The served models: which version of each file serves, swapped atomically, old ones drained.

Every ``*.onnx`` file in the models directory is one model named after its stem. A new or changed
file is loaded by ``service.loader`` (off the event loop); only a complete version (contract checked,
warmed up, batcher running) replaces the one serving, in a single reference swap on the event loop.
Requests hold the version they started with until they finish; the old version is closed when its
last request is done. A broken file leaves the old version serving and is reported in ``/models``,
the log and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from service.errors import ModelNotFound, ServiceUnavailable
from service.loader import LoadedModel, ModelLoader
from service.metrics import Metrics
from service.model_contract import InvalidModelError
from service.settings import Settings

log = logging.getLogger(__name__)

# Without SERVE_DEFAULT_MODEL: the ImageNet model when it serves (a photo of a cat is an ImageNet question),
# else the shipped CIFAR-10 one, else the first ready model alphabetically.
PREFERRED_DEFAULTS = ("resnet50-imagenet", "resnet20-cifar10")


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
    """Keeps the version serving each file of the models directory (built by the loader) and hands it out."""

    def __init__(self, settings: Settings, metrics: Metrics, infer_executor: Executor | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._loader = ModelLoader(settings, metrics, infer_executor)
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
        """The configured default, else the first of :data:`PREFERRED_DEFAULTS` serving or loading, else the
        first ready model."""
        if self.settings.default_model:
            return self.settings.default_model
        # A preferred model still loading stays the default (503 until it is ready): the default does not
        # change under a client's feet when the first model finishes loading.
        coming = {e.name for e in self.entries() if e.current is not None or e.state is ModelState.LOADING}
        candidates = [name for name in PREFERRED_DEFAULTS if name in coming] or self.ready_names()
        return candidates[0] if candidates else None

    def resolve(self, name: str | None, version: str | None = None) -> LoadedModel:
        """The version serving ``name`` (default model when None); 404/503 errors otherwise.

        With ``version``, 404 unless that is the version serving: a request checked against one version
        is never answered by another.
        """
        wanted = name or self.default_name()
        if wanted is None:
            raise ServiceUnavailable("no model is ready yet")
        entry = self._entries.get(wanted)
        if entry is None:
            served = ", ".join(self.ready_names()) or "none"
            raise ModelNotFound(f"unknown model {wanted!r} (served: {served})")
        model = entry.current
        if model is None:
            if entry.state is ModelState.LOADING:
                raise ServiceUnavailable(f"model {wanted!r} is still loading")
            raise ModelNotFound(f"model {wanted!r} is not served: {entry.error}")
        if version is not None and version != model.metadata.version:
            raise ModelNotFound(
                f"model {wanted!r} has no version {version!r} (serving {model.metadata.version!r})"
            )
        return model

    @asynccontextmanager
    async def use(self, name: str | None, version: str | None = None) -> AsyncIterator[LoadedModel]:
        """Hold the serving version of ``name`` (which must be ``version`` if given) during a request."""
        model = self.resolve(name, version)
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
            for name, (path, _) in files.items():  # listed as loading from now on, not when their turn comes
                self._entries.setdefault(name, ModelEntry(name, path))
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
            model = await self._loader.load(name, path)
        except InvalidModelError as exc:
            return self._failed(entry, ModelState.REFUSED, str(exc))
        except Exception as exc:
            log.debug("load of %s failed", path, exc_info=True)
            return self._failed(entry, ModelState.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            entry.loading = False
        self._swap(entry, model)
        return None

    def _swap(self, entry: ModelEntry, model: LoadedModel) -> None:
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
        await model.batcher.close()
        model.session = None

    async def close(self) -> None:
        """Unload everything (at shutdown), letting requests in flight finish."""
        async with self._scan_lock:
            for name in list(self._entries):
                self._unload(name, "the service is stopping")
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
