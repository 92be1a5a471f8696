"""At most once per ``requestId``: what a fleet client needs to retry without running
work twice.

A call that carries a ``requestId`` is remembered for a bounded window (a number of
ids and an age). A repeat while the first call runs joins it: one execution, both
callers answered. A repeat after it ended gets the same answer (or the same error)
again. A refusal that means "did not run" (``DID_NOT_RUN``) is forgotten at once, so
the same id may run here or elsewhere later.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InferenceError

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
        self.joined = 0  # repeats answered without running again
        self.replayed = 0

    def __len__(self) -> int:
        return len(self._calls)

    def state(self, request_id: str) -> str:
        """``running``, ``done`` (answered; kept for a repeat), or ``unknown``: it never
        started here, or it was refused as not run, or it left the window."""
        self._expire(time.monotonic())
        call = self._calls.get(request_id)
        if call is None:
            return "unknown"
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
        call = _Call(model_id, asyncio.get_running_loop().create_future())
        self._calls[request_id] = call
        try:
            result = await work()
        except InferenceError as exc:
            call.future.set_exception(exc)
            self._ended(request_id, call, forget=exc.code in DID_NOT_RUN)
            raise
        except BaseException:
            # cancelled, or a bug: whoever joined is told it did not complete here
            call.future.set_exception(InferenceError(
                "ERR_INTERNAL", f"the call with requestId {request_id!r} did not complete"))
            self._ended(request_id, call, forget=True)
            raise
        call.future.set_result(result)
        self._ended(request_id, call, forget=False)
        return result

    def _ended(self, request_id: str, call: _Call, forget: bool) -> None:
        call.future.exception()  # marks an error nobody joined as seen (no asyncio warning)
        if forget:
            if self._calls.get(request_id) is call:
                del self._calls[request_id]
            return
        call.ended = time.monotonic()
        self._calls.move_to_end(request_id)
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
