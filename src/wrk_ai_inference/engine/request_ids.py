"""At most once per ``requestId``: what a fleet client needs to retry without running
work twice.

A call that carries a ``requestId`` is remembered for a bounded window (a number of
ids and an age). A repeat while the first call runs joins it: one execution, both
callers answered. A repeat after it ended gets the same answer (or the same error)
again. A refusal that means "did not run" (``DID_NOT_RUN``) is forgotten at once, so
the same id may run here or elsewhere later. With a journal (``request_journal.py``,
rack mode) the window survives a kill: a restarted worker replays what the killed one
answered, and says ``lost`` for what it was running when it died (no answer exists;
running it again, anywhere, is its only run that answers).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InferenceError
from ..logs import get_logger
from .request_journal import RequestJournal

log = get_logger("request_ids")

#: refusals that leave the work undone: a client may send the same id again, anywhere
DID_NOT_RUN = frozenset({"ERR_CAPACITY_EXCEEDED", "ERR_NOT_READY", "ERR_MODEL_NOT_AVAILABLE"})
MAX_ID_BYTES = 128


@dataclass
class _Call:
    model_id: str
    future: asyncio.Future[Any]
    ended: float | None = None


def check_request_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_ID_BYTES:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"requestId must be a non-empty string of at most {MAX_ID_BYTES} "
                             "bytes")
    return value


class RequestIds:
    def __init__(self, limit: int, ttl_s: float) -> None:
        self.limit, self.ttl_s = limit, ttl_s
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # oldest first
        self._lost: OrderedDict[str, None] = OrderedDict()  # running when a process died
        self._journal: RequestJournal | None = None
        self.joined = 0  # repeats answered without running again
        self.replayed = 0

    def attach(self, journal: RequestJournal) -> None:
        """Take over the window of the process that wrote ``journal``, then keep it there.
        Call inside the event loop, before the first request."""
        loop = asyncio.get_running_loop()
        now_wall, now = time.time(), time.monotonic()
        recovered = journal.recover()
        ended = sorted(((rid, c) for rid, c in recovered.items() if c.ended_wall is not None),
                       key=lambda item: item[1].ended_wall or 0.0)
        for request_id, old in ended:
            call = _Call(old.model_id, loop.create_future(),
                         ended=now - (now_wall - (old.ended_wall or now_wall)))
            if old.error is not None:
                call.future.set_exception(InferenceError(*old.error))
                call.future.exception()
            else:
                call.future.set_result(old.result)
            self._calls[request_id] = call
        for request_id, old in recovered.items():
            if old.ended_wall is None:
                self._lost[request_id] = None
        while len(self._lost) > self.limit:
            self._lost.popitem(last=False)
        self._expire(now)
        self._trim()
        journal.open()
        self._journal = journal
        log.info("request window recovered", extra={"answers": len(self._calls),
                                                    "lost": len(self._lost)})

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def __len__(self) -> int:
        return len(self._calls)

    def state(self, request_id: str) -> str:
        """``running``, ``done`` (answered; kept for a repeat), ``lost`` (an earlier
        process of this worker was running it when it died: no answer exists), or
        ``unknown``: it never started here, or it was refused as not run, or it left the
        window."""
        self._expire(time.monotonic())
        call = self._calls.get(request_id)
        if call is None:
            return "lost" if request_id in self._lost else "unknown"
        return "running" if call.ended is None else "done"

    async def once(self, request_id: str, model_id: str,
                   work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` for ``request_id`` unless it ran or runs already."""
        self._expire(time.monotonic())
        known = self._calls.get(request_id)
        if known is not None:
            if known.model_id != model_id:
                raise InferenceError("ERR_INVALID_REQUEST",
                                     f"requestId {request_id!r} was used for model "
                                     f"'{known.model_id}', not '{model_id}'")
            if known.ended is None:
                self.joined += 1
            else:
                self.replayed += 1
            return await asyncio.shield(known.future)
        self._lost.pop(request_id, None)  # it died unanswered: this is its run
        call = _Call(model_id, asyncio.get_running_loop().create_future())
        self._calls[request_id] = call
        # debug lines, one pair per id, for a person reading the log; runs are counted
        # from the journal, where a run commits (the answer line is written before the
        # answer leaves); the started line comes first so a count can tell that the
        # journal's rotation lost none (tests/rack_helpers.count_runs)
        log.debug("requestId started", extra={"callerRequestId": request_id})
        if self._journal is not None:
            self._journal.started(request_id, model_id)
        try:
            result = await work()
        except InferenceError as exc:
            call.future.set_exception(exc)
            self._ended(request_id, call, exc.code, forget=exc.code in DID_NOT_RUN,
                        error=(exc.code, exc.message))
            raise
        except BaseException:
            # cancelled, or a bug: whoever joined is told it did not complete here
            call.future.set_exception(InferenceError(
                "ERR_INTERNAL", f"the call with requestId {request_id!r} did not complete"))
            self._ended(request_id, call, "cancelled", forget=True)
            raise
        call.future.set_result(result)
        self._ended(request_id, call, "ok", forget=False, result=result)
        return result

    def _ended(self, request_id: str, call: _Call, outcome: str, forget: bool,
               result: Any = None, error: tuple[str, str] | None = None) -> None:
        call.future.exception()  # marks an error nobody joined as seen (no asyncio warning)
        log.debug("requestId ended", extra={"callerRequestId": request_id, "outcome": outcome})
        if forget:
            if self._calls.get(request_id) is call:
                del self._calls[request_id]
            if self._journal is not None:
                self._journal.forgotten(request_id)
            return
        if self._journal is not None:
            self._journal.ended(request_id, result, error)
        call.ended = time.monotonic()
        self._calls.move_to_end(request_id)
        self._trim()

    def _trim(self) -> None:
        while len(self._calls) > self.limit:
            oldest_id, oldest = next(iter(self._calls.items()))
            if oldest.ended is None:  # running calls are never dropped
                break
            del self._calls[oldest_id]

    def _expire(self, now: float) -> None:
        while self._calls:
            oldest_id, oldest = next(iter(self._calls.items()))
            if oldest.ended is None or now - oldest.ended < self.ttl_s:
                return
            del self._calls[oldest_id]
