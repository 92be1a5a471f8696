"""Cancel an inference whose HTTP client went away, so its slot and run are freed at once.

Watching a request means a pending ``receive()`` on it (after the body, only the
disconnect message can come). Most requests end in well under 50 ms, so only those
still running after ``after_s`` get a watcher. One timer serves all requests: a
per-request timer costs loop time, a noticeable share of a small
model's whole request.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..logs import get_logger

log = get_logger("http")

T = TypeVar("T")

#: the sweep wakes at most this often, however many requests start
_SWEEP_EVERY_S = 0.01


class _Watched:
    __slots__ = ("due", "left", "receive", "task", "watcher")

    def __init__(self, task: asyncio.Task[Any], receive: Callable[[], Awaitable[Any]],
                 due: float) -> None:
        self.task: asyncio.Task[Any] | None = task  # None once the request has ended
        self.receive = receive
        self.due = due
        self.watcher: asyncio.Future[Any] | None = None
        self.left = False

    def watch(self) -> None:
        self.watcher = asyncio.ensure_future(self.receive())
        self.watcher.add_done_callback(self._on_message)

    def _on_message(self, done: asyncio.Future[Any]) -> None:
        if (self.task is not None and not done.cancelled() and done.exception() is None
                and done.result().get("type") == "http.disconnect"):
            self.left = True
            self.task.cancel()


class DisconnectWatch:
    def __init__(self, after_s: float = 0.05) -> None:
        self.after_s = after_s
        self._started: deque[_Watched] = deque()  # oldest first; ended ones are skipped
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, call: Awaitable[T], receive: Callable[[], Awaitable[Any]]
                  ) -> T | None:
        """Await ``call`` in the current task; None if the client disconnected meanwhile."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        watched = _Watched(task, receive, loop.time() + self.after_s)
        self._started.append(watched)
        if self._timer is None:
            self._timer = loop.call_at(watched.due, self._sweep)
        try:
            return await call
        except asyncio.CancelledError:
            if not watched.left:
                raise
            task.uncancel()
            log.info("client disconnected; request cancelled")
            return None
        finally:
            watched.task = None
            if watched.watcher is not None:
                watched.watcher.cancel()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._timer = None
        started = self._started
        while started and started[0].due <= now:
            watched = started.popleft()
            if watched.task is not None:
                watched.watch()
        if started:
            self._timer = loop.call_at(max(started[0].due, now + _SWEEP_EVERY_S), self._sweep)
