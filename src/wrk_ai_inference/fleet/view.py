"""What a fleet client knows of one worker, and how it ranks workers against each other.

A worker's last ``checkCapacity`` answer goes stale at once under load, so the load
estimate adds what this client sent since and takes off what came back: between
probes the client's own calls in flight are the freshest signal it has. A worker that
holds calls of ours and has said nothing for a while is probed before it is chosen
again, so a crashed one stops receiving work within about a probe's time-out.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

#: a worker with the model loaded, then one that has its files, then any that can load it
WARM, CACHED, LOADABLE, UNUSABLE = 0, 1, 2, 3


@dataclass
class WorkerView:
    key: str
    capacity: dict[str, Any] | None = None
    probed_at: float = -math.inf  # when the last capacity answer came
    reported: float = 0.0  # currentLoad + queued in that answer
    in_flight_then: int = 0  # our calls in flight when that probe was sent
    in_flight: int = 0
    busy_since: float = 0.0  # when in_flight last went from 0 to 1
    last_reply: float = 0.0
    latency_s: float = 0.0  # smoothed time to an answer
    down_since: float | None = None
    loadable: set[str] = field(default_factory=set)  # models it said it would load
    probe: asyncio.Future[bool] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {
        "sent": 0, "answered": 0, "refused": 0, "failedOver": 0})

    def sent(self, now: float) -> None:
        self.counts["sent"] += 1
        if self.in_flight == 0:
            self.busy_since = now
        self.in_flight += 1

    def done(self) -> None:
        self.in_flight -= 1

    def replied(self, now: float) -> None:
        self.last_reply = now
        self.down_since = None

    def answered(self, seconds: float) -> None:
        self.counts["answered"] += 1
        self.latency_s += 0.1 * (seconds - self.latency_s)

    def went_down(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now

    def apply(self, capacity: dict[str, Any], model_id: str | None, in_flight_then: int,
              now: float) -> None:
        self.capacity = capacity
        self.probed_at = now
        self.in_flight_then = in_flight_then
        self.reported = float(capacity.get("currentLoad", 0)) + float(capacity.get("queued", 0))
        if model_id is not None and capacity.get("modelAvailable"):
            self.loadable.add(model_id)
        self.replied(now)

    def stale(self, now: float, max_age_s: float) -> bool:
        """Its capacity answer is too old to route on."""
        return now - self.probed_at > max_age_s

    def quiet(self, now: float, silence_s: float) -> bool:
        """It holds our calls and has answered nothing for longer than ``silence_s``, or
        than ten of its usual answers: maybe dead, so ask before sending it more."""
        if self.in_flight == 0:
            return False
        return now - max(self.last_reply, self.busy_since) > max(silence_s,
                                                                  10 * self.latency_s)

    def tier(self, model_id: str) -> int:
        cap = self.capacity
        if cap is None or self.down_since is not None:
            return UNUSABLE
        if not cap.get("available", False) or cap.get("state") != "ready":
            return UNUSABLE
        if model_id in cap.get("availableModels", ()):
            return WARM
        if model_id in self.loadable:
            return CACHED if model_id in cap.get("cachedModels", ()) else LOADABLE
        return UNUSABLE

    def unusable_because(self, model_id: str) -> str:
        cap = self.capacity
        if self.down_since is not None:
            return "not answering"
        if cap is None:
            return "not asked yet"
        if cap.get("state") != "ready":
            return f"state {cap.get('state')}"
        if not cap.get("available", False):
            return f"full ({cap.get('currentLoad')} running, {cap.get('queued')} queued)"
        return f"cannot load {model_id}"

    def load(self) -> float:
        """Requests running and queued per slot, by the last answer corrected for what
        this client sent and got back since."""
        limit = 1
        if self.capacity is not None:
            limit = max(1, int(self.capacity.get("maxConcurrent", 1)))
        return max(0.0, self.reported + self.in_flight - self.in_flight_then) / limit
