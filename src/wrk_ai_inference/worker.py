"""InferenceWorker: the one object both transports talk to.

Its public coroutine methods are the RPC methods (snake_case); each takes and
returns JSON-able values (numpy arrays are allowed: orjson writes them) and
raises ``InferenceError`` on failure. HTTP and RPC only translate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
from collections.abc import AsyncGenerator, Callable
from enum import StrEnum
from typing import Any

import psutil

from . import __version__, bodies
from .capacity import CapacityTracker
from .config import Settings
from .engine.engine import InferenceEngine
from .engine.history import History
from .engine.request_ids import RequestIds, check_request_id
from .errors import InferenceError
from .live import LiveFeed
from .logs import get_logger
from .metrics import Metrics
from .models.manager import ModelManager, ModelState
from .models.spec import check_model_id
from .p2p.drives import Drives
from .p2p.sidecar import Sidecar
from .response_store import ResponseStore, StoredResponse
from .runtimes.base import ModelSession

log = get_logger("worker")


def _kv_cache_use(session: ModelSession) -> float:
    use = session.sequence_use()
    return use.kv_cache_use if use is not None else 0.0


def _freeze_startup_objects() -> None:
    """Move everything alive at start-up (modules, models, the runtimes' Python objects)
    out of the collector's reach. A full collection walks every tracked object: with
    onnxruntime, torch, llama-cpp-python and their imports that is hundreds of thousands,
    and one pass stalls the event loop for a few hundred milliseconds; after this it
    walks only what requests made."""
    gc.collect()
    gc.freeze()


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class _InFlight:
    """The worker's admission as a context manager: a class, since a generator-based one
    costs a few microseconds more on every request."""

    __slots__ = ("worker",)

    def __init__(self, worker: InferenceWorker) -> None:
        self.worker = worker

    def __enter__(self) -> None:
        worker = self.worker
        if worker.state is not WorkerState.READY:
            raise InferenceError("ERR_NOT_READY", f"worker is {worker.state.value}",
                                 {"state": worker.state.value, "retryAfter": 1})
        worker._active += 1
        worker._idle.clear()

    def __exit__(self, *exc_info: object) -> None:
        worker = self.worker
        worker._active -= 1
        if worker._active == 0:
            worker._idle.set()


class InferenceWorker:
    """``sidecar``: the worker's Holepunch process (rack mode, model drives), started by
    whoever needs it first and closed by ``stop``; None where the worker has no DHT."""

    def __init__(self, settings: Settings, sidecar: Sidecar | None = None) -> None:
        self.settings = settings
        self.sidecar = sidecar
        self.state = WorkerState.STARTING
        self.started_at = time.time()
        self.metrics = Metrics()
        self.capacity = CapacityTracker(settings.max_concurrent_inferences,
                                        settings.max_queued_inferences)
        self.models = ModelManager(settings,
                                   drives=Drives(sidecar) if sidecar is not None else None)
        self.history = History(settings.history_size)
        self._responses = ResponseStore()  # for the Responses API's previous_response_id
        #: idle timers that unload a model (keep_alive), by model id
        self._idle_timers: dict[str, asyncio.TimerHandle] = {}
        #: when a model's current idle timer ends (wall clock), by model id
        self.unload_at: dict[str, float] = {}
        self._unloading: set[asyncio.Task[bool]] = set()
        self.request_ids = RequestIds(settings.request_id_window,
                                      settings.request_id_ttl / 1000.0)
        self.engine = InferenceEngine(settings, self.models, self.capacity, self.history,
                                      self.metrics)
        self.metrics.bind_gauges(lambda: self.capacity.running, lambda: self.capacity.queued)
        self.metrics.bind_router_gauges(self._waiting, lambda: self.capacity.running
                                        - self.engine.sequences()[1], self._kv_cache_use)
        self.models.add_listener(self._on_model_change)
        self._active = 0  # admitted transport calls that have not answered yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = _InFlight(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._process = psutil.Process()
        self.max_loop_lag = 0.0
        self._capacity_seq = itertools.count(1)  # capacity answers, so stale ones can be dropped
        self.live = LiveFeed(self)

    # ---- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Begin serving: preload in the background so /health can say 'starting'."""
        self._tasks.append(asyncio.create_task(self._preload()))
        self._tasks.append(asyncio.create_task(self._health_monitor()))
        self._tasks.append(asyncio.create_task(self._loop_lag_monitor()))
        self._tasks.append(asyncio.create_task(self.live.run()))

    async def _preload(self) -> None:
        await self.models.refresh()
        for model_id in self.settings.preload:
            try:
                await self.models.load(model_id)
            except InferenceError as exc:
                log.error("preload failed", extra={"modelId": model_id, "error": exc.message})
        if self.state is WorkerState.STARTING:
            _freeze_startup_objects()
            self.state = WorkerState.READY
            log.info("worker ready", extra={"loadedModels": self.models.loaded_ids()})

    async def wait_ready(self) -> None:
        while self.state is WorkerState.STARTING:
            await asyncio.sleep(0.01)

    async def drain(self, grace_s: float) -> bool:
        """Stop admitting, wait for admitted calls up to ``grace_s``; True if all finished."""
        if self.state is not WorkerState.STOPPED:
            self.state = WorkerState.DRAINING
        log.info("draining", extra={"inFlight": self._active, "graceS": grace_s})
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return True
        except TimeoutError:
            log.warning("grace period ended with calls in flight", extra={"inFlight": self._active})
            return False

    async def stop(self) -> None:
        self.state = WorkerState.STOPPED
        self.live.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.engine.shutdown()
        bodies.shutdown()
        if self.sidecar is not None:
            await self.sidecar.close()
        log.info("worker stopped")

    def _admitted(self) -> _InFlight:
        """``with`` it: counts a call as in flight; refuses it with ERR_NOT_READY while
        starting or draining."""
        return self._in_flight

    # ---- RPC-shaped API ---------------------------------------------------------
    async def run_inference(self, model_id: str, input_data: Any, options: Any = None,
                            request_id: str | None = None) -> dict[str, Any]:
        """``request_id``: at most one execution for that id (``engine/request_ids.py``)."""
        if check_request_id(request_id) is None:
            return await self._run_inference(model_id, input_data, options)
        assert request_id is not None
        result: dict[str, Any] = await self.request_ids.once(
            request_id, model_id, lambda: self._run_inference(model_id, input_data, options))
        return {**result, "requestId": request_id}

    async def check_request(self, request_id: Any) -> dict[str, Any]:
        """Whether a call with ``request_id`` runs or ran here: what lets a client resend
        to another worker without running it twice (``unknown``: it did not start;
        ``lost``: it died with an earlier process, unanswered)."""
        checked = check_request_id(request_id)
        if checked is None:
            raise InferenceError("ERR_INVALID_REQUEST", "requestId is required")
        return {"requestId": checked, "state": self.request_ids.state(checked)}

    async def _run_inference(self, model_id: str, input_data: Any, options: Any
                             ) -> dict[str, Any]:
        with self._admitted():
            result = await self.engine.infer(model_id, input_data, options)
        return {"success": True, **result}

    async def stream_inference(self, model_id: str, input_data: Any, options: Any = None
                               ) -> AsyncGenerator[dict[str, Any], None]:
        """A generation's events (``InferenceEngine.infer_stream``), admitted like any
        call: the worker counts it in flight until its last event."""
        with self._admitted():
            async with contextlib.aclosing(self.engine.infer_stream(model_id, input_data,
                                                                    options)) as events:
                async for event in events:
                    yield event

    async def count_tokens(self, model_id: str, input_data: Any, options: Any = None) -> int:
        """The prompt tokens a generation request would read, without generating."""
        with self._admitted():
            return await self.engine.count_tokens(model_id, input_data, options)

    async def tokenize(self, model_id: str, text: str | None = None,
                       messages: Any = None, add_special: bool = True) -> list[int]:
        """A text's tokens (special tokens parsed, as templates write them), or the tokens
        of a conversation rendered by the model's chat template."""
        def text_tokens(task: Any, request: Any) -> list[int]:
            return list(task.tokenize(text, add_special))

        def prompt_tokens(task: Any, request: Any) -> list[int]:
            return list(task.prepare(request).tokens)

        with self._admitted():
            if messages is not None:
                return list(await self.engine.with_task(model_id, prompt_tokens,
                                                        {"messages": messages}))
            return list(await self.engine.with_task(model_id, text_tokens))

    async def detokenize(self, model_id: str, tokens: Any) -> str:
        with self._admitted():
            return str(await self.engine.with_task(
                model_id, lambda task, _: task.detokenize(tokens)))

    async def tokenizer_info(self, model_id: str) -> dict[str, Any]:
        with self._admitted():
            info: dict[str, Any] = await self.engine.with_task(
                model_id, lambda task, _: task.tokenizer_info())
            return info

    def language_model(self, model_id: Any) -> str:
        """The model a request that may name none is for: the one it names, else
        ``defaultModel``, else the only loaded language model; a 400 lists the choices."""
        if isinstance(model_id, str) and model_id:
            return model_id
        if self.settings.default_model:
            return self.settings.default_model
        loaded = list(self.sequences())
        if len(loaded) == 1:
            return loaded[0]
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"name the model (loaded language models: {sorted(loaded)}), or "
                             "set defaultModel in the config")

    # ---- stored responses (OpenAI's Responses API) -----------------------------------
    def store_response(self, response_id: str, response: dict[str, Any],
                       conversation: list[dict[str, Any]]) -> None:
        """Keep an answered response and the conversation it ends (bounded, in memory)."""
        self._responses.put(response_id, response, conversation)

    def stored_response(self, response_id: str) -> StoredResponse:
        stored = self._responses.get(response_id)
        if stored is None:
            raise InferenceError("ERR_NOT_FOUND",
                                 f"no stored response '{response_id}' (responses are kept in "
                                 "memory, at most 1000 for an hour, and not across restarts)")
        return stored

    def delete_response(self, response_id: str) -> bool:
        return self._responses.delete(response_id)

    async def cancel(self, inference_id: Any) -> dict[str, Any]:
        """Stop a running generation from another call; it answers with its text so far
        and ``finishReason: "cancelled"``."""
        if not isinstance(inference_id, str) or not inference_id:
            raise InferenceError("ERR_INVALID_REQUEST", "inferenceId (a string) is required")
        if self.engine.cancel(inference_id):
            return {"success": True, "cancelled": True}
        return {"success": True, "cancelled": False,
                "message": f"no generation with inferenceId {inference_id!r} is running "
                           "(it may have ended already)"}

    async def run_tensors(self, model_id: str, inputs: dict[str, Any], options: Any = None
                          ) -> dict[str, Any]:
        """Inference returning raw output arrays (for tensor protocols such as v2)."""
        with self._admitted():
            return await self.engine.infer(model_id, inputs, options, postprocess=False)

    async def load_model(self, model_id: str, overrides: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
        """``overrides``: ModelSpec fields to use instead of model.json's (v2's config)."""
        with self._admitted():
            try:
                entry, already = await self.models.load(model_id, overrides)
            except InferenceError as exc:
                if exc.code == "ERR_MODEL_LOAD_FAILED" and self.models.known(model_id):
                    self.metrics.loads.labels(model_id, "failed").inc()
                raise
            if not already:
                self.metrics.loads.labels(model_id, "success").inc()
            return {"success": True,
                    "message": "Model already loaded" if already else "Model loaded",
                    "model": entry.metadata()}

    async def unload_model(self, model_id: str) -> dict[str, Any]:
        with self._admitted():
            unloaded = await self.models.unload(model_id)
            return {"success": True,
                    "message": "Model unloaded" if unloaded else "Model was not loaded"}

    async def model_file(self, model_id: str) -> dict[str, Any]:
        """The model's artifact on disk: size, modification time, GGUF metadata."""
        return await self.models.file_details(model_id)

    def keep_alive(self, model_id: str, seconds: float) -> None:
        """How long ``model_id`` stays loaded once idle: 0 unloads it when its requests
        are done, a negative value keeps it loaded (no timer), else it is unloaded after
        ``seconds`` with no request. Each call replaces the model's timer."""
        timer = self._idle_timers.pop(model_id, None)
        if timer is not None:
            timer.cancel()
        self.unload_at.pop(model_id, None)
        if seconds < 0:
            return
        self.unload_at[model_id] = time.time() + seconds
        self._idle_timers[model_id] = asyncio.get_running_loop().call_later(
            seconds, self._idle_unload, model_id, seconds)

    def _idle_unload(self, model_id: str, seconds: float) -> None:
        self._idle_timers.pop(model_id, None)
        if model_id not in self.models.loaded_ids():
            self.unload_at.pop(model_id, None)
            return
        if self.models.entry(model_id).in_flight:  # busy: wait for it to go idle again
            self.keep_alive(model_id, max(seconds, 1.0))
            return
        self.unload_at.pop(model_id, None)
        log.info("idle model unloaded (keep_alive)", extra={"modelId": model_id})
        task = asyncio.get_running_loop().create_task(self.models.unload(model_id))
        self._unloading.add(task)  # referenced until done: the loop keeps weak ones only
        task.add_done_callback(self._unloading.discard)

    async def check_capacity(self, model_id: str | None = None) -> dict[str, Any]:
        cap = self.capacity
        result: dict[str, Any] = {
            "maxConcurrent": cap.max_running,
            "currentLoad": cap.running,
            "queued": cap.queued,
            "maxQueued": cap.max_queued,
            "available": self.state is WorkerState.READY and cap.has_room,
            "availableModels": self.models.loaded_ids(),
            "cachedModels": self.models.cached_ids(),
            "state": self.state.value,
            "seq": next(self._capacity_seq),
        }
        sequences = self.sequences()
        if sequences:
            result["sequences"] = sequences
        if model_id is not None:
            check_model_id(model_id)
            exists = self.models.exists(model_id)
            loaded = model_id in result["availableModels"]
            result["modelLoaded"] = loaded
            result["modelAvailable"] = loaded or (exists and self.settings.auto_load)
        return result

    def sequences(self) -> dict[str, dict[str, float]]:
        """Each loaded language model's sequence slots: what runs, what waits, how full its
        KV cache is."""
        out = {}
        for model_id in self.models.loaded_ids():
            session = self.models.entry(model_id).session
            use = session.sequence_use() if session is not None else None
            if use is not None:
                out[model_id] = {"slots": use.slots, "running": use.running,
                                 "waiting": use.waiting,
                                 "contextLength": use.context_length,
                                 "kvCacheUse": round(use.kv_cache_use, 4)}
        return out

    async def get_available_models(self) -> dict[str, Any]:
        return {"models": self.models.loaded_ids()}

    async def list_models(self) -> dict[str, Any]:
        return {"models": await self.models.list_models()}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        return await self.models.get_model(model_id)

    async def get_stats(self) -> dict[str, Any]:
        """The history's statistics, and ``executions``: requests admitted to run, per
        model (a repeated requestId that was answered again is not one)."""
        ids = self.request_ids
        return {**self.history.stats(), "executions": dict(self.engine.admitted),
                "requestIds": {"remembered": len(ids), "joined": ids.joined,
                               "replayed": ids.replayed}}

    async def get_health(self) -> dict[str, Any]:
        status = "healthy" if self.state is WorkerState.READY else self.state.value
        return {
            "status": status,
            "service": "ai-inference",
            "version": __version__,
            "uptime": round(time.time() - self.started_at, 3),
            "capacity": await self.check_capacity(),
            "loadedModels": self.models.loaded_ids(),
            "memoryBytes": self.memory_bytes(),
        }

    def memory_bytes(self) -> int:
        """The process's resident memory."""
        return int(self._process.memory_info().rss)

    def announce_transport(self, name: str, view: Callable[[], dict[str, Any]]) -> None:
        """A transport says where it can be reached (``view`` is asked at each tick of the
        live feed: an RPC key's topics change as models load)."""
        self.live.transports[name] = view

    def listen(self) -> AsyncGenerator[bytes, None]:
        """The live feed (``live.py``): the worker's state and figures once a second."""
        return self.live.listen()

    async def ping(self, payload: Any = None) -> Any:
        return payload

    # ---- internals ---------------------------------------------------------------
    def _waiting(self) -> float:
        """Requests queued for a slot, and generations holding one while they wait for a
        sequence of their model."""
        return self.capacity.queued + self.engine.sequences()[1]

    def _kv_cache_use(self) -> float:
        sessions = (self.models.entry(m).session for m in self.models.loaded_ids())
        uses = (s.sequence_use() for s in sessions if s is not None)
        return max((u.kv_cache_use for u in uses if u is not None), default=0.0)

    def _on_model_change(self, model_id: str, state: ModelState) -> None:
        loaded = state is ModelState.LOADED
        if state is ModelState.AVAILABLE:
            asyncio.get_running_loop().create_task(self.engine.forget(model_id))
        self.metrics.loaded.labels(model_id).set(1 if loaded else 0)
        entry = self.models.entry(model_id)
        self.metrics.model_memory.labels(model_id).set(entry.memory_bytes if loaded else 0)
        session = entry.session
        if loaded and session is not None and session.sequence_use() is not None:
            self.metrics.bind_kv_cache(model_id, lambda: _kv_cache_use(session))
        elif not loaded:
            self.metrics.unbind_kv_cache(model_id)

    async def _loop_lag_monitor(self, period: float = 0.05) -> None:
        """A timer that should fire every ``period``: its lateness is the loop's lag."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            lag = max(0.0, loop.time() - due)
            self.metrics.loop_lag.observe(lag)
            self.max_loop_lag = max(self.max_loop_lag, lag)

    async def _health_monitor(self) -> None:
        interval = self.settings.health_check_interval / 1000.0
        while True:
            await asyncio.sleep(interval)
            log.info("health", extra={
                "state": self.state.value,
                "running": self.capacity.running,
                "queued": self.capacity.queued,
                "loadedModels": self.models.loaded_ids(),
                "modelMemoryBytes": self.models.memory_used(),
                "rssBytes": self._process.memory_info().rss,
                "inFlight": self._active,
                "maxLoopLagMs": round(self.max_loop_lag * 1000, 2),
            })
            self.max_loop_lag = 0.0
            bodies.release_memory()
