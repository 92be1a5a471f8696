"""Dynamic batching: concurrent requests for one model become one runtime call.

Requests are merged up to the model's ``maxBatchSize`` rows or ``batchDelayMs``
of waiting, run once, and the outputs are split back by rows (views, no copy).
The batcher waits only while other requests for the model are already on their
way (admitted, not yet submitted); a lone request is dispatched at once, so
batching costs nothing at low load. While every execution slot is busy,
requests pile up and the next batch is naturally larger.

Batches expected to take microseconds (the model's smoothed time per row times
the batch's rows, under ``inlineRunMicros``) run on the event loop in the
batcher's own task: a lone request then costs about one task
switch more than without batching, and concurrent ones still share one runtime
call. Longer batches run on the inference threads.

Each request keeps its own deadline. A batch is stopped in the runtime only
when every one of its requests has given up. A runtime error fails that batch
alone, and says so. Requests with different non-batch shapes are never mixed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from ..errors import InferenceError
from ..logs import get_logger
from ..runtimes.base import LOOP_RUN, ModelSession, RunHandle, Tensors

log = get_logger("batcher")


@dataclass(eq=False)
class _Item:
    feeds: Tensors
    rows: int
    signature: tuple[tuple[int, ...], ...]
    future: asyncio.Future[Tensors]
    on_end: Callable[[], None]
    ended: bool = False

    def end(self) -> None:
        """The request's work is over (ran, failed or dropped): free its slot once."""
        if not self.ended:
            self.ended = True
            self.on_end()


class Batcher:
    def __init__(self, model_id: str, session: ModelSession, max_batch: int, delay_s: float,
                 executor: Executor, parallel: int, on_the_way: Callable[[], int],
                 run: Callable[[ModelSession, Tensors, RunHandle], Tensors],
                 inline: Callable[[int], bool] = lambda rows: False,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.model_id = model_id
        self.session = session
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.executor = executor
        self._on_the_way = on_the_way
        self._run = run
        self._inline = inline
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(parallel)
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self.batches = 0
        self.rows = 0
        self._inside = 0
        self._running = 0  # batches in the runtime now

    @staticmethod
    def supports(session: ModelSession, max_batch: int) -> bool:
        return max_batch > 1 and all(t.has_batch_dim for t in session.inputs) and all(
            t.has_batch_dim for t in session.outputs)

    def submit(self, feeds: Tensors, on_end: Callable[[], None]) -> asyncio.Future[Tensors]:
        """Queue one request's rows; the future gets its share of the outputs."""
        first = next(iter(feeds.values()))
        item = _Item(feeds, int(first.shape[0]),
                     tuple(a.shape[1:] for a in feeds.values()),
                     asyncio.get_running_loop().create_future(), on_end)
        self._inside += 1
        self._queue.append(item)
        self._wakeup.set()
        return item.future

    def abandon(self, future: asyncio.Future[Tensors]) -> None:
        """The caller gave up (deadline, disconnect): leave the queue now if still in it."""
        if not future.done():
            future.cancel()
        for item in self._queue:
            if item.future is future:
                self._queue.remove(item)
                self._end(item)
                break

    @property
    def inside(self) -> int:
        """Requests submitted whose work has not ended (queued or in a running batch)."""
        return self._inside

    def _end(self, item: _Item) -> None:
        if not item.ended:
            self._inside -= 1
            item.end()

    async def _next_batch(self) -> list[_Item]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch: list[_Item] = []
        rows = 0
        close_at = time.perf_counter() + self.delay_s
        while True:
            while self._queue and rows < self.max_batch:
                item = self._queue[0]
                if item.future.done():  # gave up while queued
                    self._queue.popleft()
                    self._end(item)
                    continue
                if batch and (rows + item.rows > self.max_batch
                              or item.signature != batch[0].signature):
                    return batch
                self._queue.popleft()
                batch.append(item)
                rows += item.rows
            remaining = close_at - time.perf_counter()
            if rows >= self.max_batch or remaining <= 0 or (
                    self._running == 0 and self._on_the_way() <= 0):
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return batch

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            rows = sum(item.rows for item in batch)
            if self._inline(rows):
                # this batch should take microseconds (by the model's time per row): run
                # it here, on the loop, where a hop to a thread (or even to another task)
                # costs more than the run (docs/performance.md)
                await self._execute(batch, rows, inline=True)
            else:
                asyncio.get_running_loop().create_task(self._execute(batch, rows))

    async def _execute(self, batch: list[_Item], rows: int, inline: bool = False) -> None:
        self._running += 1
        slot_held = True

        def free_slot() -> None:
            nonlocal slot_held
            if slot_held:
                slot_held = False
                self._running -= 1
                self._slots.release()

        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {name: np.concatenate([item.feeds[name] for item in batch])
                         for name in batch[0].feeds}
            if inline:
                outputs = self._run(self.session, feeds, LOOP_RUN)
            else:
                handle = self.session.new_run()

                def gave_up(_: asyncio.Future[Tensors]) -> None:
                    if all(item.future.cancelled() for item in batch):
                        handle.cancel()  # nobody waits for this batch any more

                for item in batch:
                    item.future.add_done_callback(gave_up)
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._run, self.session, feeds, handle)
                # the next batch goes to the runtime before this one's answers are
                # written: otherwise the cores idle while the loop writes a batch of answers
                free_slot()
                await asyncio.sleep(0)
            self.batches += 1
            self.rows += rows
            if self._on_batch is not None:
                self._on_batch(rows)
            self._answer(batch, outputs)
        except InferenceError as exc:
            self._fail(batch, exc)
        except Exception as exc:
            log.exception("batch failed unexpectedly", extra={"modelId": self.model_id,
                                                              "requests": len(batch)})
            error = InferenceError("ERR_INFERENCE_FAILED", "the batch failed unexpectedly")
            error.__cause__ = exc
            self._fail(batch, error)
        finally:
            free_slot()
            for item in batch:
                self._end(item)

    @staticmethod
    def _answer(batch: list[_Item], outputs: Tensors) -> None:
        """Each request gets its own rows as views (slices: cheaper than np.split)."""
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        start = 0
        for item in batch:
            stop = start + item.rows
            if not item.future.done():
                item.future.set_result({name: value[start:stop]
                                        for name, value in outputs.items()})
            start = stop

    def _fail(self, batch: list[_Item], exc: InferenceError) -> None:
        size = len(batch)
        for item in batch:
            if not item.future.done():
                message = exc.message if size == 1 else \
                    f"{exc.message} (in a batch of {size} requests, which all failed)"
                error = InferenceError(exc.code, message, exc.details)
                error.__cause__ = exc.__cause__  # the detail, for the engine's log line
                item.future.set_exception(error)

    async def close(self) -> None:
        self._task.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(InferenceError(
                    "ERR_MODEL_NOT_AVAILABLE", f"model '{self.model_id}' was unloaded"))
            self._end(item)
        self._queue.clear()
