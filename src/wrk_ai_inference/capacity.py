"""Admission control: N running, M waiting in FIFO order, everything else refused now.

Refusing at once (ERR_CAPACITY_EXCEEDED, HTTP 429 + Retry-After) is what lets
an orchestrator move the request to another worker; an unbounded queue would
only turn overload into timeouts.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from .errors import InferenceError


class CapacityTracker:
    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self.refused = 0  # requests turned away at once since start
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.recent_latency_s = 0.1  # smoothed, for Retry-After

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def has_room(self) -> bool:
        return self.running < self.max_running or self.queued < self.max_queued

    def retry_after_s(self) -> int:
        """A rough wait for a slot: the queue drained at the recent per-request latency."""
        per_slot = self.recent_latency_s * (self.queued + 1) / self.max_running
        return max(1, math.ceil(per_slot))

    async def acquire(self, timeout_s: float) -> float:
        """Take a running slot, waiting in line up to ``timeout_s``; returns seconds waited."""
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return 0.0
        if len(self._waiters) >= self.max_queued:
            self.refused += 1
            raise InferenceError(
                "ERR_CAPACITY_EXCEEDED",
                f"worker is at capacity: {self.running} running (max {self.max_running}), "
                f"{self.queued} queued (max {self.max_queued}); retry later or elsewhere",
                {"retryAfter": self.retry_after_s(), "running": self.running,
                 "queued": self.queued},
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        started = loop.time()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as we gave up: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            raise
        return loop.time() - started

    def release(self) -> None:
        """Hand the slot to the next waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    def observe_latency(self, seconds: float) -> None:
        self.recent_latency_s = 0.9 * self.recent_latency_s + 0.1 * seconds
