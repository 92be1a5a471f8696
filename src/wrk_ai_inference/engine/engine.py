"""InferenceEngine: the whole life of one request.

validate tensors (on the event loop, cheap, before taking a slot, so bad input
never occupies capacity) -> admission (CapacityTracker) -> task preprocessing
(image decoding, tokenising: on a worker thread, after admission, under the
deadline) -> execute on a worker thread under a deadline that cancels the
runtime's run (or on the loop, for models whose runs take microseconds)
-> postprocess -> record in history and metrics. The slot and the model pin are released when
the run really ends, not when the client is answered, so a run that cannot be
stopped still counts against capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..capacity import CapacityTracker
from ..config import Settings
from ..errors import InferenceError, first_line
from ..json_tensors import map_numbers, plain
from ..logs import get_logger, new_id, request_id_var, transport_var
from ..metrics import Metrics
from ..models.manager import ModelEntry, ModelManager
from ..runtimes.base import LOOP_RUN, ModelSession, RunHandle, Tensors
from ..runtimes.llama import Generation
from ..tasks import Limits, Task
from ..tasks.base import StreamingTask
from ..tasks.tensor import select_outputs, tensor_inputs
from .batcher import Batcher
from .history import History

log = get_logger("engine")

_MAX_TIMEOUT_MS = 3_600_000

#: Threads that render chat templates and tokenise prompts (bounded, milliseconds each).
_PROMPT_THREADS = 2

_MAX_TOP_K = 1000


def _timeout_s(options: Any, settings: Settings) -> float:
    """The deadline in seconds that ``options`` (an object, else a 400) asks for."""
    if not isinstance(options, dict):
        raise InferenceError("ERR_INVALID_REQUEST", "options must be an object")
    timeout_ms = options.get("timeout", settings.inference_timeout)
    if (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float)
            or not 0 < timeout_ms <= _MAX_TIMEOUT_MS):
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"options.timeout must be milliseconds in (0, {_MAX_TIMEOUT_MS}]")
    return float(timeout_ms) / 1000.0


def _parse_options(options: Any, settings: Settings) -> tuple[float, int, list[str] | None]:
    """(timeout seconds, top-k, requested outputs) from the request's ``options``."""
    if options is None:  # most requests: the defaults, validated when settings loaded
        return settings.inference_timeout / 1000.0, settings.default_top_k, None
    timeout_s = _timeout_s(options, settings)
    top_k = options.get("topK", settings.default_top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= _MAX_TOP_K:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"options.topK must be a whole number in [1, {_MAX_TOP_K}]")
    outputs = options.get("outputs")
    if outputs is not None and (not isinstance(outputs, list)
                                or not all(isinstance(o, str) for o in outputs)):
        raise InferenceError("ERR_INVALID_REQUEST", "options.outputs must be a list of names")
    return timeout_s, top_k, outputs


_INFERENCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _stream_options(options: Any, settings: Settings) -> tuple[float, str, dict[str, Any]]:
    """(timeout seconds, inference id, the task's options) of a generation request."""
    if options is None:
        return settings.inference_timeout / 1000.0, new_id(), {}
    timeout_s = _timeout_s(options, settings)
    inference_id = options.get("inferenceId")
    if inference_id is None:
        inference_id = new_id()
    elif not isinstance(inference_id, str) or not _INFERENCE_ID_RE.match(inference_id):
        raise InferenceError("ERR_INVALID_REQUEST",
                             "options.inferenceId must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    return timeout_s, inference_id, options


def _streaming_task(entry: ModelEntry) -> StreamingTask:
    task = entry.pipeline
    if not isinstance(task, StreamingTask):
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"model '{entry.id}' does not generate text; its task is "
                             f"'{task.name if task else '?'}'")
    return task


def _generation_request(entry: ModelEntry, input_data: Any, options: Any,
                        settings: Settings, started: float
                        ) -> tuple[StreamingTask, Any, float, str]:
    """(the model's streaming task, the request it checked, the deadline, the inference
    id) of a generation request, checked on the loop before a slot is taken."""
    timeout_s, inference_id, task_options = _stream_options(options, settings)
    task = _streaming_task(entry)
    request = task.request(_lists(input_data), _lists(task_options))
    return task, request, started + timeout_s, inference_id


def _too_deep() -> InferenceError:
    """JSON may nest about a thousand levels (orjson's limit); walking values that deep
    runs out of Python's stack, which is the request's fault, not the worker's."""
    return InferenceError("ERR_INVALID_REQUEST", "the request nests its values too deeply")


def _lists(value: Any) -> Any:
    """JSON values as plain Python (number arrays decoded to numpy become lists again)."""
    return map_numbers(value, lambda numbers: numbers.tolist())


@dataclass
class Tokens:
    """Token counts of one generation, for usage and metrics."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0  # of the prompt's tokens, those whose KV cells were reused
    first_s: float | None = None
    last_s: float = 0.0  # perf_counter() of the latest delta

    def usage(self) -> dict[str, int]:
        return {"promptTokens": self.prompt, "completionTokens": self.completion,
                "totalTokens": self.prompt + self.completion, "cachedTokens": self.cached}


class _Hold:
    """What a request holds before its run takes over: the model pin, then the slot.

    Released once: by the request when it fails before its run, by the run when it ends,
    or by a preprocessing thread still working when the deadline passed.
    """

    __slots__ = ("engine", "entry", "pinned", "slot")

    def __init__(self, engine: InferenceEngine, entry: ModelEntry) -> None:
        self.engine = engine
        self.entry = entry
        self.pinned = True
        self.slot = False

    def handed_over(self) -> None:
        self.pinned = self.slot = False

    def release(self) -> None:
        if self.slot:
            self.slot = False
            self.engine.capacity.release()
        if self.pinned:
            self.pinned = False
            self.engine.models.release(self.entry)

    def release_when(self, work: Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        """Leave the release to ``work``'s end (on the loop's thread)."""
        pinned, slot = self.pinned, self.slot
        self.handed_over()

        def ended(_: Future[Any]) -> None:
            self.pinned, self.slot = pinned, slot
            self.release()

        work.add_done_callback(lambda done: loop.call_soon_threadsafe(ended, done))


class InferenceEngine:
    def __init__(self, settings: Settings, models: ModelManager, capacity: CapacityTracker,
                 history: History, metrics: Metrics) -> None:
        self.settings = settings
        self.models = models
        self.capacity = capacity
        self.history = history
        self.metrics = metrics
        self.threads = settings.inference_threads or (os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(max_workers=self.threads,
                                           thread_name_prefix="inference")
        # Language-model prompts are made (template, tokenizer) on threads of their own:
        # behind tensor runs in the inference pool a prompt waited as long as they ran
        self.prompts = ThreadPoolExecutor(max_workers=_PROMPT_THREADS,
                                          thread_name_prefix="prompt")
        self._batchers: dict[str, tuple[ModelSession, Batcher | None]] = {}
        self.executions: dict[str, int] = {}  # runtime calls per model (a batch is one)
        self.admitted: dict[str, int] = {}  # requests per model that were admitted to run
        # Runs that take microseconds are done on the loop thread, where a hop to a worker
        # thread and back would cost more than the run (see ModelSession.run_seconds).
        self._inline_s = settings.inline_run_micros / 1_000_000
        # Batches of one model that run at once: enough to use every core, no more,
        # since each run already uses intraOpThreads of them.
        intra = settings.intra_op_threads or (os.cpu_count() or 1)
        self.batch_parallelism = settings.batch_parallelism or max(
            1, min(self.threads, (os.cpu_count() or 1) // intra))
        self.overrunning = 0
        metrics.overrunning.set_function(lambda: self.overrunning)
        self._generations: dict[str, Generation] = {}  # running generations by inference id
        metrics.bind_sequences(lambda: self.sequences()[0], lambda: self.sequences()[1])

    async def infer(self, model_id: str, input_data: Any, options: Any = None,
                    postprocess: bool = True) -> dict[str, Any]:
        """One request, one answer. ``postprocess=False`` returns the raw output tensors
        only (the v2 protocol asks for tensors, not for the task's answer). A model whose
        task streams (text generation) answers with its whole stream collected."""
        started = time.perf_counter()
        try:
            entry = await self.models.acquire(model_id)
        except InferenceError as exc:
            self._record(model_id, exc.code, started, 0.0, 0.0)
            raise
        task = entry.pipeline
        if postprocess and isinstance(task, StreamingTask):
            collected = task.collector()
            async with contextlib.aclosing(self._stream(entry, input_data, options,
                                                        started)) as events:
                async for event in events:
                    collected.add(event)
            return self._envelope(model_id, collected.inference_id, collected.result(),
                                  started)
        return await self._infer_tensors(entry, input_data, options, postprocess, started)

    def _envelope(self, model_id: str, inference_id: str, result: Any, started: float
                  ) -> dict[str, Any]:
        return {
            "modelId": model_id,
            "inferenceId": inference_id,
            "result": result,
            "processingTime": round((time.perf_counter() - started) * 1000, 3),
            "timestamp": int(time.time() * 1000),
        }

    async def _infer_tensors(self, entry: ModelEntry, input_data: Any, options: Any,
                             postprocess: bool, started: float) -> dict[str, Any]:
        model_id = entry.id
        queue_s = compute_s = 0.0
        hold = _Hold(self, entry)  # the pin now; the slot once admitted
        try:
            try:
                timeout_s, top_k, wanted = _parse_options(options, self.settings)
                deadline = started + timeout_s
                assert entry.session is not None and entry.spec is not None
                task = entry.pipeline if postprocess else None
                if task is None or not task.costly:
                    # cheap checks, before a slot, so bad input never takes one
                    feeds = (task.inputs(entry.session.inputs, input_data, self._limits(entry))
                             if task is not None else
                             tensor_inputs(entry.session.inputs, input_data,
                                           self.settings.max_tensor_elements,
                                           self.settings.max_string_bytes))
                    queue_s = await self._admit(deadline, model_id)
                    hold.slot = True
                else:
                    # decoding images and tokenising cost CPU: they take a slot first
                    queue_s = await self._admit(deadline, model_id)
                    hold.slot = True
                    feeds = await self._preprocess(entry, task, input_data, deadline, hold)
                hold.handed_over()  # from here the run's end releases both slot and pin
                outputs, compute_s = await self._execute(entry, feeds, deadline)
            finally:
                hold.release()
            if task is None:
                result: dict[str, Any] = {"outputs": select_outputs(outputs, wanted),
                                          "version": entry.spec.version}
            else:
                result = task.outputs(outputs, feeds, top_k, wanted)
        except InferenceError as exc:
            self._record(model_id, exc.code, started, queue_s, compute_s)
            raise self._with_request_id(model_id, exc) from exc.__cause__
        except RecursionError:
            self._record(model_id, "ERR_INVALID_REQUEST", started, queue_s, compute_s)
            raise _too_deep() from None
        except Exception as exc:
            self._record(model_id, "ERR_INFERENCE_FAILED", started, queue_s, compute_s)
            raise self._unexpected(model_id) from exc
        self._record(model_id, None, started, queue_s, compute_s)
        return self._envelope(model_id, new_id(), result, started)

    def _with_request_id(self, model_id: str, exc: InferenceError) -> InferenceError:
        """A runtime failure's details go to the log; the client gets a stable message
        that names the request, so the two can be matched."""
        if exc.code != "ERR_INFERENCE_FAILED" or exc.__cause__ is None:
            return exc
        log.error("inference failed", extra={"modelId": model_id,
                                             "detail": first_line(exc.__cause__)})
        return InferenceError(exc.code, f"{exc.message} (request {request_id_var.get() or '-'}"
                              ": the worker's log has the details)", exc.details)

    def _unexpected(self, model_id: str) -> InferenceError:
        log.exception("inference failed unexpectedly", extra={"modelId": model_id})
        return InferenceError("ERR_INFERENCE_FAILED",
                              f"inference failed unexpectedly (request "
                              f"{request_id_var.get() or '-'}: the worker's log has the "
                              "details)")

    def _limits(self, entry: ModelEntry) -> Limits:
        assert entry.spec is not None
        return Limits(entry.spec.max_batch_size or 256, self.settings.max_tensor_elements,
                      self.settings.max_string_bytes)

    # ---- streams (text generation) ------------------------------------------------
    async def infer_stream(self, model_id: str, input_data: Any, options: Any = None
                           ) -> AsyncGenerator[dict[str, Any], None]:
        """One request whose answer is a stream of events (``start``, ``delta``,
        ``finish`` per choice, ``end``), under the same admission, deadline, history and
        metrics as ``infer``. The slot is held until the model's thread is done; closing
        the iterator early (a client gone) stops the generation within a token."""
        started = time.perf_counter()
        try:
            entry = await self.models.acquire(model_id)
        except InferenceError as exc:
            self._record(model_id, exc.code, started, 0.0, 0.0)
            raise
        async with contextlib.aclosing(self._stream(entry, input_data, options,
                                                    started)) as events:
            async for event in events:
                yield event

    async def count_tokens(self, model_id: str, input_data: Any, options: Any = None) -> int:
        """The prompt tokens a generation request would read (template, tools and all),
        without generating."""
        def prompt(task: StreamingTask, request: Any) -> int:
            return len(task.prepare(request).tokens)

        return int(await self.with_task(model_id, prompt, input_data, options))

    async def with_task(self, model_id: str, work: Callable[[StreamingTask, Any], Any],
                        input_data: Any = None, options: Any = None) -> Any:
        """``work(task, request)`` on a prompt thread for a language model's task (the
        tokenizer routes, token counts): admitted under a slot and the request's deadline,
        as the preparation of a generation is, since it costs what a prompt costs.
        ``request`` is the task's check of ``input_data`` when given, else None."""
        started = time.perf_counter()
        entry = await self.models.acquire(model_id)
        hold = _Hold(self, entry)
        try:
            if input_data is not None:
                task, request, deadline, _ = _generation_request(
                    entry, input_data, options, self.settings, started)
            else:
                timeout_s, _, _ = _stream_options(options, self.settings)
                task, request, deadline = _streaming_task(entry), None, started + timeout_s
            await self._admit(deadline, model_id)
            hold.slot = True
            return await self._off_loop(self.prompts, work, (task, request), deadline,
                                        hold, "while reading the prompt")
        except RecursionError:
            raise _too_deep() from None
        finally:
            hold.release()

    def cancel(self, inference_id: str) -> bool:
        """Stop the running generation ``inference_id``; False when none has that id."""
        job = self._generations.get(inference_id)
        if job is None:
            return False
        job.stop("cancelled")
        return True

    async def _stream(self, entry: ModelEntry, input_data: Any, options: Any, started: float
                      ) -> AsyncGenerator[dict[str, Any], None]:
        model_id = entry.id
        hold = _Hold(self, entry)
        queue_s = 0.0
        job: Generation | None = None
        inference_id = ""
        ended = submitted = False
        timer: asyncio.TimerHandle | None = None
        code: str | None = "ERR_INFERENCE_FAILED"
        tokens = Tokens()
        try:
            task, request, deadline, inference_id = _generation_request(
                entry, input_data, options, self.settings, started)
            if inference_id in self._generations:
                raise InferenceError("ERR_INVALID_REQUEST",
                                     f"a generation with inferenceId {inference_id!r} is "
                                     "already running")
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

            def on_events(batch: list[tuple[Any, ...]]) -> None:
                for event in batch:
                    if event[0] in ("end", "error"):  # the thread is done with it: free now
                        hold.release()
                        self._unregister(inference_id, job)
                    events.put_nowait(event)

            def deliver(batch: list[tuple[Any, ...]]) -> None:  # on the model's thread
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(on_events, batch)

            # registered (so cancel finds it) before it waits for a slot and its prompt
            job = task.generation(request, deliver)
            shaper = task.shaper(request)
            self._generations[inference_id] = job
            queue_s = await self._admit(deadline, model_id)
            hold.slot = True
            prompt = await self._off_loop(self.prompts, task.prepare, (request,),
                                          deadline, hold, "while reading the prompt")
            job.start_with(prompt.tokens, prompt.grammar)

            def expire() -> None:
                # the thread stops within a token (or a graph node of the prompt) and then
                # frees the slot; the caller is answered now either way
                job.stop("deadline")
                events.put_nowait(("expired",))

            timer = loop.call_at(loop.time() + max(deadline - time.perf_counter(), 0.0),
                                 expire)
            task.submit(job)
            submitted = True
            yield {"type": "start", "inferenceId": inference_id, "chat": request.chat,
                   "n": request.sampling.n}
            inter_token = self.metrics.inter_token.labels(model_id)  # once, not per token
            while True:
                kind, *rest = await events.get()
                if kind == "delta":  # the most frequent: first
                    now = time.perf_counter()
                    if tokens.first_s is None:
                        tokens.first_s = now
                        self.metrics.ttft.labels(model_id).observe(now - started)
                    else:
                        inter_token.observe(now - tokens.last_s)
                    tokens.last_s = now
                    for out in shaper.delta(rest[0], rest[1], rest[2]):
                        yield out
                elif kind == "error":
                    ended = True
                    raise rest[0]
                elif kind == "expired":
                    raise self._timeout("while generating")
                elif kind == "prompt":
                    tokens.prompt = rest[0]
                elif kind == "promptLogprobs":  # echo: the prompt's tokens, scored
                    yield {"type": "promptLogprobs", "index": rest[0], "entries": rest[1]}
                elif kind == "finish":
                    if rest[1] == "deadline":
                        continue  # answered at the end, once the thread is done
                    tokens.completion += rest[2]
                    for out in shaper.finish(rest[0], rest[1], rest[3]):
                        yield out
                elif kind == "cached":  # prompt tokens whose cells were reused, not read
                    tokens.cached = rest[0]
                elif kind == "drafts":  # (drafted, accepted) by a choice's speculation
                    self.metrics.draft_tokens.labels(model_id).inc(rest[0])
                    self.metrics.draft_accepted.labels(model_id).inc(rest[1])
                elif kind == "media":  # (seconds of audio, seconds it took) of a whole input
                    self.metrics.audio_seconds.labels(model_id).inc(rest[0])
                    if rest[0] > 0:
                        self.metrics.real_time_factor.labels(model_id).observe(rest[1] / rest[0])
                else:  # end
                    ended = True
                    if rest[0] == "deadline":
                        raise self._timeout("while generating")
                    code = None
                    yield {"type": "end", "finishReason": rest[0], "usage": tokens.usage()}
                    return
        except InferenceError as exc:
            code = exc.code
            raise self._with_request_id(model_id, exc) from exc.__cause__
        except (asyncio.CancelledError, GeneratorExit):
            code = "ERR_CANCELLED"
            raise
        except RecursionError:
            code = "ERR_INVALID_REQUEST"
            raise _too_deep() from None
        except Exception as exc:
            raise self._unexpected(model_id) from exc
        finally:
            if timer is not None:
                timer.cancel()
            if not submitted:
                hold.release()
                self._unregister(inference_id, job)
            elif not ended and job is not None:
                job.stop("disconnected")  # the thread frees the slot when it stops
            self._record_generation(model_id, code, started, queue_s, tokens)

    def _unregister(self, inference_id: str, job: Generation | None) -> None:
        if job is not None and self._generations.get(inference_id) is job:
            del self._generations[inference_id]

    def _record_generation(self, model_id: str, code: str | None, started: float,
                           queue_s: float, tokens: Tokens) -> None:
        now = time.perf_counter()
        if code == "ERR_CANCELLED":  # the client went away: not a failure of the worker
            code = None
        rate = None
        if tokens.first_s is not None and tokens.completion > 1 and now > tokens.first_s:
            rate = (tokens.completion - 1) / (now - tokens.first_s)
            self.metrics.decode_rate.labels(model_id).observe(rate)
        self._record(model_id, code, started, queue_s, now - started - queue_s,
                     ttft_ms=None if tokens.first_s is None
                     else (tokens.first_s - started) * 1000,
                     tokens=tokens.completion, tokens_per_s=rate)
        if tokens.prompt or tokens.completion:
            self.metrics.prompt_tokens.labels(model_id).inc(tokens.prompt)
            self.metrics.generated_tokens.labels(model_id).inc(tokens.completion)

    def sequences(self) -> tuple[int, int]:
        """(running, waiting) generations over every loaded language model."""
        running = waiting = 0
        for model_id in self.models.loaded_ids():
            session = self.models.entry(model_id).session
            use = session.sequence_use() if session is not None else None
            if use is not None:
                running += use.running
                waiting += use.waiting
        return running, waiting

    async def _preprocess(self, entry: ModelEntry, task: Task, input_data: Any,
                          deadline: float, hold: _Hold) -> Tensors:
        """The task's preprocessing (image decoding, tokenising) on an inference thread."""
        assert entry.session is not None and entry.spec is not None
        feeds: Tensors = await self._off_loop(
            self.executor, task.inputs,
            (entry.session.inputs, plain(input_data), self._limits(entry)),
            deadline, hold, "while preprocessing the input")
        return feeds

    async def _off_loop(self, pool: ThreadPoolExecutor, work_fn: Callable[..., Any],
                        args: tuple[Any, ...], deadline: float, hold: _Hold, where: str
                        ) -> Any:
        """``work_fn(*args)`` on a thread of ``pool``, under the request's deadline.

        Pillow, tokenizers and chat templates hold the GIL for long stretches on big
        inputs; on the loop they would stall every other request. A deadline or a client
        gone meanwhile answers at once; the slot and pin stay taken until the thread is
        done (the task bounds its inputs, so that is soon).
        """
        loop = asyncio.get_running_loop()
        work = pool.submit(work_fn, *args)
        waiter = asyncio.wrap_future(work)
        timer = loop.call_at(loop.time() + max(deadline - time.perf_counter(), 0.0),
                             waiter.cancel)
        try:
            return await waiter
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not work.cancel():  # already running: it releases when it ends
                hold.release_when(work, loop)
            if current is None or current.cancelling() == 0:
                raise self._timeout(where) from None
            raise
        finally:
            timer.cancel()

    async def _admit(self, deadline: float, model_id: str) -> float:
        """Wait for a running slot; from here the request counts as started."""
        remaining = deadline - time.perf_counter()
        try:
            queued = await self.capacity.acquire(max(remaining, 0.0))
        except TimeoutError:
            raise self._timeout("while waiting in the queue") from None
        self.admitted[model_id] = self.admitted.get(model_id, 0) + 1
        return queued

    def _timeout(self, where: str) -> InferenceError:
        return InferenceError("ERR_INFERENCE_TIMEOUT", f"the request's deadline passed {where}")

    def batcher(self, entry: ModelEntry) -> Batcher | None:
        """The model's batcher, made on first use; None when batching does not apply."""
        session, spec = entry.session, entry.spec
        assert session is not None and spec is not None
        known = self._batchers.get(entry.id)
        if known is not None and known[0] is session:
            return known[1]
        if known is not None and known[1] is not None:
            asyncio.get_running_loop().create_task(known[1].close())
        made: Batcher | None = None
        if self.settings.dynamic_batching and Batcher.supports(session, spec.max_batch_size):
            made = Batcher(entry.id, session, spec.max_batch_size, spec.batch_delay_ms / 1000,
                           self.executor, self.batch_parallelism,
                           on_the_way=lambda: entry.in_flight - (made.inside if made else 0),
                           run=self._run, inline=lambda rows: self.inline(session, rows),
                           on_batch=lambda rows: self._executed(entry.id, rows))
        self._batchers[entry.id] = (session, made)
        return made

    def inline(self, session: ModelSession, rows: int = 1) -> bool:
        """Whether a run of ``rows`` rows is expected to take under ``inlineRunMicros``."""
        if rows == 1:
            return session.run_seconds is not None and session.run_seconds < self._inline_s
        return session.row_seconds is not None and session.row_seconds * rows < self._inline_s

    def _ran(self, model_id: str) -> None:
        self.executions[model_id] = self.executions.get(model_id, 0) + 1

    def _executed(self, model_id: str, rows: int) -> None:
        self._ran(model_id)
        self.metrics.batch_rows.labels(model_id).observe(rows)

    async def forget(self, model_id: str) -> None:
        """Drop the batcher of a model that was unloaded."""
        known = self._batchers.pop(model_id, None)
        if known is not None and known[1] is not None:
            await known[1].close()

    async def _execute(self, entry: ModelEntry, feeds: Tensors, deadline: float
                       ) -> tuple[Tensors, float]:
        """Run directly or through the batcher; slot and pin are freed when the work ends."""
        session = entry.session
        assert session is not None
        run_started = time.perf_counter()
        ended = overran = False

        def finished() -> None:
            nonlocal ended
            ended = True
            self.capacity.release()
            self.models.release(entry)
            if overran:
                self.overrunning -= 1

        batcher = self.batcher(entry)
        if batcher is None and self.inline(session):
            # microseconds: cheaper than a hop to a thread and back; such a run cannot
            # overrun a deadline by more than its own few microseconds. With a batcher even
            # tiny runs go through it: under load one call for many rows costs the loop far
            # less than one call each, and a lone request still runs at once, on the loop.
            try:
                outputs = self._run(session, feeds, LOOP_RUN)
                self._ran(entry.id)
            finally:
                finished()
            return outputs, time.perf_counter() - run_started

        loop = asyncio.get_running_loop()
        handle: RunHandle | None = None
        waiter: asyncio.Future[Tensors]
        if batcher is not None:
            waiter = batcher.submit(feeds, finished)  # this request's alone
        else:
            handle = session.new_run()
            waiter = loop.create_future()

            def direct_done(done: asyncio.Future[Tensors]) -> None:
                failed = done.cancelled() or done.exception() is not None
                if not failed:
                    self._ran(entry.id)
                finished()
                if waiter.done():
                    return
                if done.cancelled():
                    waiter.cancel()
                elif failed:
                    waiter.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    waiter.set_result(done.result())

            loop.run_in_executor(self.executor, self._run, session, feeds, handle
                                 ).add_done_callback(direct_done)
        # The deadline cancels the request's own future; the run (or the batch) goes on
        # until it ends or nobody waits for it. A timer costs less than wait_for +
        # shield on every request.
        timer = loop.call_at(loop.time() + max(deadline - time.perf_counter(), 0.0),
                             waiter.cancel)
        try:
            outputs = await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            expired = task is None or task.cancelling() == 0  # not the caller going away
            if batcher is not None:
                batcher.abandon(waiter)
            elif handle is not None:
                handle.cancel()
            if not ended:
                overran = True
                self.overrunning += 1
            if expired:
                stoppable = handle.cancellable if handle is not None else True
                raise self._timeout(f"while running on model '{entry.id}'"
                                    + ("" if stoppable
                                       else "; the run continues until it ends")) from None
            raise
        finally:
            timer.cancel()
        return outputs, time.perf_counter() - run_started

    def _run(self, session: ModelSession, feeds: Tensors, handle: RunHandle) -> Tensors:
        started = time.perf_counter()
        try:
            result: Tensors = session.run(feeds, handle)
            took = time.perf_counter() - started
            previous = session.run_seconds
            session.run_seconds = took if previous is None else 0.8 * previous + 0.2 * took
            first = next(iter(feeds.values()), None)
            rows = int(first.shape[0]) if first is not None and first.ndim else 1
            if rows > 1:  # from batches only: a single run's fixed costs would dominate
                previous = session.row_seconds
                per_row = took / rows
                session.row_seconds = (per_row if previous is None
                                       else 0.8 * previous + 0.2 * per_row)
            return result
        except InferenceError:
            raise
        except Exception as exc:
            if handle.cancelled:
                raise InferenceError("ERR_INFERENCE_TIMEOUT", "run stopped at its deadline"
                                     ) from exc
            # the runtime's text names internals (node names, shapes, paths): it goes to
            # the log (infer adds the request id), the client gets a stable message
            raise InferenceError("ERR_INFERENCE_FAILED", "the runtime failed on this input"
                                 ) from exc

    def _record(self, model_id: Any, code: str | None, started: float, queue_s: float,
                compute_s: float, **generation: Any) -> float:
        """``generation``: a language model's ttft_ms, tokens and tokens_per_s."""
        elapsed = time.perf_counter() - started
        # label only ids the repository knows: arbitrary ids must not grow the metric set
        model = model_id if self.models.known(model_id) else "_unknown"
        self.history.record(model, code is None, code, elapsed * 1000, queue_s * 1000,
                            compute_s * 1000, request_id=request_id_var.get(),
                            transport=transport_var.get(), **generation)
        self.metrics.request_done(model, code or "success", elapsed, queue_s, compute_s)
        if code is None:
            self.capacity.observe_latency(elapsed)
        return elapsed

    def shutdown(self) -> None:
        for job in list(self._generations.values()):
            job.stop("shutdown")
        self.prompts.shutdown(wait=False, cancel_futures=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
