"""ModelManager: which models exist, which are loaded, and who is using them.

Loaded models sit in an LRU bounded by ``modelCacheSize`` (count) and
``memoryLimit`` (bytes, measured as the process's resident-memory growth across
the load, never less than the artifact's size). A model that is serving a
request is pinned: it is never evicted, and an unload waits for its running
requests. Many requests for one cold model share a single load (and a single fetch,
for a model whose files come from a source).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import psutil

from ..config import Settings
from ..errors import InferenceError, first_line
from ..logs import get_logger
from ..p2p.drives import Drives
from ..runtimes import get_runtime
from ..runtimes.base import ModelSession
from ..tasks import Task, load_task
from . import gguf
from .drive_repository import DriveRepository, drive_location
from .repository import LocalRepository, ModelFiles, ModelRepository, unknown_model
from .sources import FetchProgress, Sources
from .spec import DriveSource, ModelSpec, UrlSource, check_model_id

log = get_logger("models")


class ModelState(StrEnum):
    AVAILABLE = "available"
    FETCHING = "fetching"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(eq=False)
class ModelEntry:
    """One model id the worker knows of, loaded or not."""

    id: str
    state: ModelState = ModelState.AVAILABLE
    spec: ModelSpec | None = None
    session: ModelSession | None = None
    labels: list[str] | None = None
    pipeline: Task | None = None  # the task and its resources (a tokenizer, ...)
    error: str | None = None
    fetch: FetchProgress | None = None  # while its files are being fetched
    memory_bytes: int = 0
    artifact_bytes: int = 0
    loaded_at: float | None = None
    load_ms: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    #: ModelSpec fields a load request changed (v2's config override), applied on load
    overrides: dict[str, Any] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    load_task: asyncio.Task[ModelEntry] | None = None

    def metadata(self) -> dict[str, Any]:
        spec = self.spec
        data: dict[str, Any] = {
            "id": self.id,
            "state": self.state.value,
            "version": spec.version if spec else None,
            "runtime": spec.runtime if spec else None,
            "task": spec.task if spec else None,
            "description": spec.description if spec else None,
        }
        if self.session is not None:
            data["inputs"] = [t.model_dump() for t in self.session.inputs]
            data["outputs"] = [t.model_dump() for t in self.session.outputs]
        elif spec is not None:
            data["inputs"] = [t.model_dump() for t in spec.inputs] if spec.inputs else None
            data["outputs"] = [t.model_dump() for t in spec.outputs] if spec.outputs else None
        if spec is not None:
            data["maxBatchSize"] = spec.max_batch_size
            data["source"] = _source(spec)
        if self.labels is not None:
            data["labels"] = len(self.labels)
        data.update(
            sizeBytes=self.artifact_bytes or None,
            memoryBytes=self.memory_bytes or None,
            loadedAt=int(self.loaded_at * 1000) if self.loaded_at else None,
            loadTimeMs=round(self.load_ms, 1) if self.load_ms is not None else None,
            inFlight=self.in_flight,
            error=self.error,
        )
        if self.fetch is not None:
            data["fetch"] = self.fetch.view()
        return data


def _source(spec: ModelSpec) -> dict[str, Any]:
    """Where the model's files come from, without what a URL may carry beyond its host and
    path (credentials, a signed query)."""
    source = spec.source
    if isinstance(source, DriveSource):
        return {"kind": "drive", "key": source.hyperdrive, "path": source.path,
                "version": source.version}
    if isinstance(source, UrlSource):
        url = urlsplit(source.url)
        return {"kind": "url", "url": f"{url.scheme}://{url.hostname}"
                f"{f':{url.port}' if url.port else ''}{url.path}"}
    return {"kind": "local"}


ChangeListener = Callable[[str, ModelState], None]
#: states in which an entry is busy with its model, whatever the repository says now
_BUSY = (ModelState.FETCHING, ModelState.LOADED, ModelState.LOADING, ModelState.UNLOADING)


def repository_for(settings: Settings, drives: Drives | None) -> ModelRepository:
    """``modelRepository`` is a folder, or ``hyperdrive:<key>[@<version>]``."""
    sources = Sources(drives, settings.fetch_timeout / 1000.0)
    location = drive_location(settings.model_repository)
    if location is None:
        return LocalRepository(settings.model_repository, sources)
    if drives is None:
        raise InferenceError("ERR_MODEL_LOAD_FAILED", "modelRepository is a Hyperdrive: start "
                             "the worker with --bootstrap HOST:PORT and --store-dir DIR")
    return DriveRepository(*location, drives, sources)


class ModelManager:
    def __init__(self, settings: Settings, repository: ModelRepository | None = None,
                 drives: Drives | None = None) -> None:
        self.settings = settings
        self.repository = repository or repository_for(settings, drives)
        self._entries: dict[str, ModelEntry] = {}
        #: GGUF headers read, by (path, size, mtime): a changed file is read again
        self._gguf: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._lru: OrderedDict[str, ModelEntry] = OrderedDict()
        # Loads run one at a time so that the memory each one adds can be measured.
        self._load_lock = threading.Lock()
        self._listeners: list[ChangeListener] = []
        self._process = psutil.Process()
        # Loads under way, each holding its place in the cache (count, and the memory
        # its artifact will take) from the moment it passed the room check.
        self._reserved: dict[str, int] = {}
        self._load_ended = asyncio.Event()
        self._on_disk: set[str] = set()  # see cached_ids

    # ---- queries -----------------------------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _notify(self, model_id: str, state: ModelState) -> None:
        for listener in self._listeners:
            try:
                listener(model_id, state)
            except Exception:
                log.exception("model state listener failed", extra={"modelId": model_id})

    def entry(self, model_id: str) -> ModelEntry:
        """The entry for a repository model; ERR_MODEL_NOT_FOUND for anything else."""
        check_model_id(model_id)
        entry = self._entries.get(model_id)
        if entry is not None and entry.state in _BUSY:
            return entry
        if not self.repository.has(model_id):
            raise unknown_model(model_id)
        if entry is None:
            entry = self._entries[model_id] = ModelEntry(id=model_id)
            entry.idle.set()
        return entry

    async def _describe(self, model_id: str) -> ModelEntry:
        entry = self.entry(model_id)
        if entry.spec is None and entry.state in (ModelState.AVAILABLE, ModelState.FAILED):
            try:
                entry.spec = await self.repository.describe(model_id)
            except InferenceError as exc:
                entry.state, entry.error = ModelState.FAILED, exc.message
        return entry

    async def refresh(self) -> None:
        """Read the repository's list of models (a drive repository knows its ids from
        it) and which of them are on disk; a failure is logged, and the next listing
        tries again."""
        try:
            await self.repository.list_ids()
            self._on_disk = set(await self.repository.on_disk())
        except InferenceError as exc:
            log.error("listing the model repository failed", extra={"error": exc.message})

    def cached_ids(self) -> list[str]:
        """Models whose files are on disk but that are not loaded: a router's second
        choice after the warm ones (as of the last listing, and every load since)."""
        return sorted(self._on_disk - set(self._lru))

    async def list_models(self) -> list[dict[str, Any]]:
        ids = set(await self.repository.list_ids()) | set(self._lru)
        return [(await self._describe(i)).metadata() for i in sorted(ids)]

    async def get_model(self, model_id: str) -> dict[str, Any]:
        return (await self._describe(model_id)).metadata()

    async def file_details(self, model_id: str) -> dict[str, Any]:
        """The model's artifact as it is on disk: size, modification time and, for a GGUF,
        its header's metadata (read off the loop, once per file version); empty where the
        artifact is not on this machine."""
        entry = await self._describe(model_id)
        if entry.spec is None:
            return {}
        path = self.repository.local_artifact(model_id, entry.spec)
        if path is None:
            return {}
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        meta = self._gguf.get(key)
        if meta is None:
            meta = (await asyncio.to_thread(gguf.metadata, path)
                    if path.suffix == ".gguf" else {})
            self._gguf[key] = meta
        return {"size": stat.st_size, "modified": stat.st_mtime, "gguf": meta}

    def known(self, model_id: object) -> bool:
        """True for ids already checked against the repository (cheap, no disk access)."""
        return isinstance(model_id, str) and model_id in self._entries

    def loaded_ids(self) -> list[str]:
        return list(self._lru)

    def serving_ids(self) -> list[str]:
        """Loaded models that admit requests (not being unloaded): what a worker announces."""
        return [i for i, e in self._lru.items() if e.state is ModelState.LOADED]

    def memory_used(self) -> int:
        return sum(e.memory_bytes for e in self._lru.values())

    def exists(self, model_id: str) -> bool:
        try:
            self.entry(model_id)
        except InferenceError:
            return False
        return True

    # ---- use by requests ------------------------------------------------------------
    async def acquire(self, model_id: str) -> ModelEntry:
        """Pin a loaded model for one request (loading it first when autoLoad is on)."""
        entry = self.entry(model_id)
        if entry.state is not ModelState.LOADED:
            if entry.state is ModelState.UNLOADING or not self.settings.auto_load:
                raise InferenceError(
                    "ERR_MODEL_NOT_AVAILABLE",
                    f"model '{model_id}' is not loaded ({entry.state.value}); load it with "
                    f"POST /api/models/{model_id}/load",
                    {"modelId": model_id, "state": entry.state.value},
                )
            entry, _ = await self.load(model_id)
        entry.in_flight += 1
        entry.idle.clear()
        entry.last_used = time.time()
        self._lru.move_to_end(model_id)
        return entry

    def release(self, entry: ModelEntry) -> None:
        entry.in_flight -= 1
        if entry.in_flight == 0:
            entry.idle.set()

    # ---- load / unload ------------------------------------------------------------
    async def load(self, model_id: str, overrides: dict[str, Any] | None = None
                   ) -> tuple[ModelEntry, bool]:
        """Load once; concurrent callers share the same load. Returns (entry, was_loaded).

        ``overrides`` (ModelSpec fields) replace model.json's values from this load on;
        a loaded model whose overrides change is unloaded and loaded again."""
        entry = self.entry(model_id)
        if overrides is not None and overrides != entry.overrides:
            entry.overrides = dict(overrides)
            if entry.state in (ModelState.LOADED, ModelState.LOADING, ModelState.UNLOADING):
                await self.unload(model_id)
                entry = self.entry(model_id)
        if entry.state is ModelState.LOADED:
            self._lru.move_to_end(model_id)
            return entry, True
        if entry.state is ModelState.UNLOADING:
            await entry.idle.wait()
            while entry.state is ModelState.UNLOADING:
                await asyncio.sleep(0.01)
        if entry.load_task is None:  # a fetch under way is part of the load under way
            entry.load_task = asyncio.get_running_loop().create_task(self._load(entry))
        # shield: a caller that goes away must not cancel the load others wait for
        return await asyncio.shield(entry.load_task), False

    async def _load(self, entry: ModelEntry) -> ModelEntry:
        entry.state, entry.error = ModelState.LOADING, None
        self._notify(entry.id, entry.state)
        started = time.perf_counter()
        try:
            spec = await self.repository.describe(entry.id)
            if entry.overrides:
                spec = spec.model_copy(update=entry.overrides)
            entry.spec = spec
            files = await self._fetch(entry, spec)
            artifact = files.artifact
            entry.artifact_bytes = artifact.stat().st_size
            runtime = get_runtime(spec.runtime, self.settings.supported_model_types,
                                  self.settings.intra_op_threads, self.settings.inter_op_threads,
                                  self.settings.gpu_enabled)
            if entry.artifact_bytes > self.settings.memory_limit:
                raise InferenceError(
                    "ERR_MODEL_LOAD_FAILED",
                    f"model '{entry.id}': its artifact alone ({entry.artifact_bytes} bytes) is "
                    f"larger than memoryLimit ({self.settings.memory_limit} bytes)",
                )
            await self._reserve(entry, entry.artifact_bytes)
            labels = self._labels(files, spec)
            session, pipeline, grown = await asyncio.to_thread(
                self._load_blocking, runtime, files, spec, labels)
        except InferenceError as exc:
            self._fail(entry, exc.message)
            raise
        except Exception as exc:
            log.exception("model load failed unexpectedly", extra={"modelId": entry.id})
            self._fail(entry, f"model '{entry.id}': {type(exc).__name__}: {first_line(exc)}")
            raise InferenceError("ERR_MODEL_LOAD_FAILED", entry.error or "") from exc
        else:
            entry.session, entry.labels, entry.pipeline = session, labels, pipeline
            self._on_disk.add(entry.id)
            entry.memory_bytes = max(grown, entry.artifact_bytes)
            entry.state, entry.loaded_at = ModelState.LOADED, time.time()
            entry.load_ms = (time.perf_counter() - started) * 1000
            self._lru[entry.id] = entry  # its place moves from the reservations to the LRU
        finally:
            entry.load_task = None
            entry.fetch = None
            self._unreserve(entry)
        self._enforce_memory(keep=entry)
        log.info("model loaded", extra={"modelId": entry.id, "memoryBytes": entry.memory_bytes,
                                        "loadMs": round(entry.load_ms, 1)})
        self._notify(entry.id, entry.state)
        return entry

    async def _fetch(self, entry: ModelEntry, spec: ModelSpec) -> ModelFiles:
        """The model's files from the repository; a model with a source is ``fetching``
        meanwhile, with its progress in the entry."""
        if spec.source is None:
            return await self.repository.fetch(entry.id, spec, FetchProgress(entry.id))
        entry.state, entry.fetch = ModelState.FETCHING, FetchProgress(entry.id)
        self._notify(entry.id, entry.state)
        files = await self.repository.fetch(entry.id, spec, entry.fetch)
        entry.state = ModelState.LOADING
        self._notify(entry.id, entry.state)
        return files

    def _load_blocking(self, runtime: Any, files: ModelFiles, spec: ModelSpec,
                       labels: list[str] | None) -> tuple[ModelSession, Task, int]:
        model_id = files.model_id
        with self._load_lock:
            before = self._process.memory_info().rss
            session: ModelSession = runtime.load(files.artifact, spec, model_id)
            try:
                task = load_task(spec, files.folder, labels, session, model_id,
                                 self.settings.max_audio_seconds)
                if spec.warmup:
                    from ..engine.warmup import warm_up

                    warm_up(session)
            except BaseException:
                session.close()
                raise
            grown = max(0, self._process.memory_info().rss - before)
            return session, task, grown + session.memory_outside()

    def _labels(self, files: ModelFiles, spec: ModelSpec) -> list[str] | None:
        model_id = files.model_id
        if spec.labels is None or isinstance(spec.labels, list):
            return spec.labels
        path = files.path(spec.labels)
        try:
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model_id}': labels file unreadable: {first_line(exc)}"
            ) from exc

    def _fail(self, entry: ModelEntry, message: str) -> None:
        entry.state, entry.error, entry.session = ModelState.FAILED, message, None
        log.error("model load failed", extra={"modelId": entry.id, "error": message})
        self._notify(entry.id, entry.state)

    def _evictable(self, keep: ModelEntry) -> ModelEntry | None:
        for candidate in self._lru.values():  # oldest first
            if candidate is not keep and candidate.in_flight == 0:
                return candidate
        return None

    async def _reserve(self, entry: ModelEntry, expected_bytes: int) -> None:
        """Take a place in the cache for a load, before it starts: concurrent loads of
        different models each see the others' places, so the count bound holds after
        every load. Waits while other loads hold the places it needs."""
        while True:
            try:
                self._make_room(entry, expected_bytes)
            except InferenceError:
                if not self._reserved:
                    raise
                await self._load_ended.wait()  # a load under way may leave room
                continue
            self._reserved[entry.id] = expected_bytes
            return

    def _unreserve(self, entry: ModelEntry) -> None:
        if self._reserved.pop(entry.id, None) is not None:
            ended, self._load_ended = self._load_ended, asyncio.Event()
            ended.set()

    def _make_room(self, incoming: ModelEntry, expected_bytes: int) -> None:
        """Evict idle models, oldest first, until one more fits by count and by memory,
        counting the places that loads under way hold."""
        limit = self.settings.memory_limit
        while (len(self._lru) + len(self._reserved) >= self.settings.model_cache_size
               or self.memory_used() + sum(self._reserved.values()) + expected_bytes > limit):
            victim = self._evictable(incoming)
            if victim is None:
                if len(self._lru) + len(self._reserved) >= self.settings.model_cache_size:
                    raise InferenceError(
                        "ERR_CAPACITY_EXCEEDED",
                        f"cannot load '{incoming.id}': the model cache is full "
                        f"({len(self._lru) + len(self._reserved)}/"
                        f"{self.settings.model_cache_size}, loads under way included) and "
                        "every loaded model is serving requests; retry when one is idle",
                        {"retryAfter": 1},
                    )
                break  # memory is an estimate here; _enforce_memory checks the real figure
            self._drop(victim, reason="evicted (least recently used)")

    def _enforce_memory(self, keep: ModelEntry) -> None:
        while self.memory_used() > self.settings.memory_limit:
            victim = self._evictable(keep)
            if victim is None:
                log.warning("memoryLimit exceeded while every other model is busy",
                            extra={"memoryUsed": self.memory_used(),
                                   "memoryLimit": self.settings.memory_limit})
                return
            self._drop(victim, reason="evicted (memoryLimit)")

    def _drop(self, entry: ModelEntry, reason: str) -> None:
        session, entry.session, entry.pipeline = entry.session, None, None
        self._lru.pop(entry.id, None)
        entry.state, entry.memory_bytes, entry.loaded_at = ModelState.AVAILABLE, 0, None
        if session is not None:
            session.close()
        log.info("model unloaded", extra={"modelId": entry.id, "reason": reason})
        self._notify(entry.id, entry.state)

    async def unload(self, model_id: str) -> bool:
        """Stop admitting requests for the model, wait for its running ones, drop it."""
        entry = self.entry(model_id)
        if entry.load_task is not None:
            try:
                await asyncio.shield(entry.load_task)
            except InferenceError:
                return False
        if entry.state is ModelState.UNLOADING:
            await entry.idle.wait()
            return True
        if entry.state is not ModelState.LOADED:
            return False
        entry.state = ModelState.UNLOADING
        self._notify(entry.id, entry.state)
        await entry.idle.wait()
        self._drop(entry, reason="unload requested")
        return True

    async def unload_all(self) -> None:
        for model_id in list(self._lru):
            await self.unload(model_id)
