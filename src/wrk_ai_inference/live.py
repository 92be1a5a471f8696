"""The live feed: the worker's figures once a second, for the web console and anyone else.

One sampler per worker turns the request history into a time series (requests per
second by model, latency p50/p99, time to first token, decoding speed, queue depth)
and keeps the last few minutes of it. While someone listens it also builds, once per
tick, one message with the worker's state, capacity, models and the requests that
ended since the last tick, serialised once and handed to every listener: ten consoles
cost the worker what one costs, plus nine queue puts. A listener that does not keep
up loses ticks, never the worker's memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from . import __version__
from .engine.history import Record
from .errors import InferenceError
from .fleet.client import running_clients
from .logs import get_logger

if TYPE_CHECKING:
    from .worker import InferenceWorker

log = get_logger("live")

#: seconds of figures kept, at one sample a second: what a console's charts show
SERIES_S = 300
#: seconds of requests the latency, first-token and speed figures are taken over
WINDOW_S = 5.0
#: requests a new listener is sent from the past; the console keeps as many
RECENT = 200
#: listeners at once: each holds a connection and a few messages
MAX_LISTENERS = 64
#: messages a listener may fall behind by before it loses the oldest
BACKLOG = 4

TransportView = Callable[[], dict[str, Any]]


def _percentiles(values: list[float], points: list[float]) -> list[float | None]:
    if not values:
        return [None] * len(points)
    return [round(float(v), 1) for v in np.percentile(values, points)]


class LiveFeed:
    def __init__(self, worker: InferenceWorker, period_s: float = 1.0) -> None:
        self.worker = worker
        self.period_s = period_s
        self.series: deque[dict[str, Any]] = deque(maxlen=int(SERIES_S / period_s))
        #: what the transports say of themselves (an HTTP address, an RPC key and topics)
        self.transports: dict[str, TransportView] = {}
        self._window: deque[Record] = deque()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._seen = worker.history.count
        self._listeners: set[asyncio.Queue[bytes | None]] = set()
        self._models_sent = b""  # the models list of the last tick, as sent

    # ---- sampling --------------------------------------------------------------
    async def run(self) -> None:
        """Sample every period until cancelled; a tick that fails is logged and skipped."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.period_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await self.tick()
            except Exception:
                log.exception("live feed tick failed")

    async def tick(self) -> None:
        history = self.worker.history
        new = history.since(self._seen)
        self._seen = history.count
        now = time.time()
        sample = self._sample(now, new)
        self.series.append(sample)
        views = [r.view() for r in new[-RECENT:]]  # a busy second's newest: what is shown
        self._recent.extend(views)
        if self._listeners:
            now_state = await self.state()
            models = orjson.dumps(now_state["models"])
            if models == self._models_sent:  # unchanged: listeners keep the last list
                del now_state["models"]
            else:  # serialised once: the message takes the bytes as they are
                now_state["models"] = orjson.Fragment(models)
            self._models_sent = models
            self._send(orjson.dumps({"type": "tick", **now_state, "sample": sample,
                                     "requests": views}))

    def _sample(self, now: float, new: list[Record]) -> dict[str, Any]:
        window = self._window
        window.extend(new)
        while window and window[0].timestamp < now - WINDOW_S:
            window.popleft()
        by_model: dict[str, int] = {}
        for record in new:
            by_model[record.model_id] = by_model.get(record.model_id, 0) + 1
        ok = [r.latency_ms for r in window if r.ok]
        p50, p99 = _percentiles(ok, [50, 99])
        ttft = _percentiles([r.ttft_ms for r in window if r.ttft_ms is not None], [50])[0]
        rates = [r.tokens_per_s for r in window if r.tokens_per_s is not None]
        running, waiting = self.worker.engine.sequences()
        capacity = self.worker.capacity
        return {"t": round(now * 1000), "requests": {m: round(n / self.period_s, 2)
                                                     for m, n in by_model.items()},
                "failed": sum(1 for r in new if not r.ok),
                "p50Ms": p50, "p99Ms": p99, "ttftMs": ttft,
                "tokensPerS": _percentiles(rates, [50])[0],
                "running": capacity.running, "queued": capacity.queued + waiting,
                "sequences": running}

    # ---- what a listener is sent ----------------------------------------------
    async def state(self) -> dict[str, Any]:
        """The worker now: status, transports, capacity, models, fleets."""
        worker = self.worker
        capacity = worker.capacity
        cached = set(worker.models.cached_ids())
        models = []
        for model in (await worker.list_models())["models"]:
            model["cached"] = model["id"] in cached
            unload_at = worker.unload_at.get(model["id"])
            model["unloadAt"] = round(unload_at * 1000) if unload_at else None
            models.append(model)
        return {
            "status": {"state": worker.state.value, "version": __version__,
                       "uptimeS": round(time.time() - worker.started_at, 1),
                       "memoryBytes": worker.memory_bytes(),
                       "modelMemoryBytes": worker.models.memory_used()},
            "transports": {name: view() for name, view in self.transports.items()},
            "capacity": {"running": capacity.running, "maxConcurrent": capacity.max_running,
                         "queued": capacity.queued, "maxQueued": capacity.max_queued,
                         "refused": capacity.refused, "sequences": worker.sequences()},
            "models": models,
            "fleets": [client.view() for client in running_clients()],
        }

    async def listen(self) -> AsyncGenerator[bytes, None]:
        """Messages as JSON: first ``hello`` (the state, the series so far and the recent
        requests), then a ``tick`` each period, until the worker stops; a tick carries
        ``models`` only when the list changed. The listener
        counts from its second message on, so one abandoned after ``hello`` holds nothing."""
        if len(self._listeners) >= MAX_LISTENERS:
            raise InferenceError("ERR_CAPACITY_EXCEEDED",
                                 f"{MAX_LISTENERS} live feeds are open already; close one")
        yield orjson.dumps({"type": "hello", **await self.state(),
                            "periodMs": round(self.period_s * 1000),
                            "series": list(self.series), "requests": list(self._recent)})
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(BACKLOG)
        self._listeners.add(queue)
        try:
            while (message := await queue.get()) is not None:
                yield message
        finally:
            self._listeners.discard(queue)

    def _send(self, message: bytes | None) -> None:
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()  # a listener that lags loses its oldest tick
            queue.put_nowait(message)

    def close(self) -> None:
        """End every listener's feed (the worker stops)."""
        self._send(None)
