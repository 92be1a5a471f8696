"""A bounded record of recent requests, the one source for /api/stats.

Lifetime counters never forget; latency percentiles come from the last
``historySize`` requests, so they describe the worker as it is now.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Record:
    model_id: str
    ok: bool
    code: str | None
    latency_ms: float
    queue_ms: float
    compute_ms: float
    timestamp: float
    request_id: str | None = None
    transport: str | None = None
    #: language models: time to the first token, tokens generated, decoding speed
    ttft_ms: float | None = None
    tokens: int = 0
    tokens_per_s: float | None = None

    def view(self) -> dict[str, Any]:
        """The record as the live feed and the console show it."""
        return {"t": round(self.timestamp * 1000), "requestId": self.request_id,
                "model": self.model_id, "transport": self.transport, "ok": self.ok,
                "code": self.code, "latencyMs": round(self.latency_ms, 1),
                "queueMs": round(self.queue_ms, 1),
                "ttftMs": None if self.ttft_ms is None else round(self.ttft_ms, 1),
                "tokens": self.tokens,
                "tokensPerS": None if self.tokens_per_s is None
                else round(self.tokens_per_s, 1)}


class _Totals:
    __slots__ = ("compute_ms", "failed", "failed_ms", "last", "queue_ms", "success",
                 "success_ms")

    def __init__(self) -> None:
        self.success = 0
        self.failed = 0
        self.success_ms = 0.0
        self.failed_ms = 0.0
        self.queue_ms = 0.0
        self.compute_ms = 0.0
        self.last: float | None = None


class History:
    def __init__(self, size: int) -> None:
        self._records: deque[Record] = deque(maxlen=size)
        self._totals: dict[str, _Totals] = {}
        self.started = time.time()
        self.count = 0  # records ever added: ``since`` takes a count it returned before

    def record(self, model_id: str, ok: bool, code: str | None, latency_ms: float,
               queue_ms: float = 0.0, compute_ms: float = 0.0, **extra: Any) -> None:
        """``extra``: the request's id and transport, and a generation's figures (the
        optional fields of ``Record``)."""
        now = time.time()
        self._records.append(Record(model_id, ok, code, latency_ms, queue_ms, compute_ms, now,
                                    **extra))
        self.count += 1
        totals = self._totals.setdefault(model_id, _Totals())
        if ok:
            totals.success += 1
            totals.success_ms += latency_ms
        else:
            totals.failed += 1
            totals.failed_ms += latency_ms
        totals.queue_ms += queue_ms
        totals.compute_ms += compute_ms
        totals.last = now

    @staticmethod
    def _summary(records: list[Record], success: int, failed: int) -> dict[str, Any]:
        total = success + failed
        window_ok = [r.latency_ms for r in records if r.ok]
        latency: dict[str, float | None] = {"p50": None, "p95": None, "p99": None, "mean": None}
        if window_ok:
            p50, p95, p99 = np.percentile(window_ok, [50, 95, 99])
            latency = {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
                       "p99": round(float(p99), 3),
                       "mean": round(float(np.mean(window_ok)), 3)}
        errors: dict[str, int] = {}
        for r in records:
            if r.code:
                errors[r.code] = errors.get(r.code, 0) + 1
        return {
            "total": total,
            "successful": success,
            "failed": failed,
            "successRate": round(success / total, 6) if total else None,
            "latencyMs": latency,
            "window": len(records),
            "errors": errors,
        }

    def since(self, count: int) -> list[Record]:
        """The records added after the history held ``count`` (those still kept)."""
        new = min(self.count - count, len(self._records))
        if new <= 0:
            return []
        records = self._records
        return [records[i] for i in range(len(records) - new, len(records))]

    def stats(self) -> dict[str, Any]:
        records = list(self._records)
        by_model: dict[str, Any] = {}
        for model_id, totals in sorted(self._totals.items()):
            mine = [r for r in records if r.model_id == model_id]
            summary = self._summary(mine, totals.success, totals.failed)
            summary["lastInference"] = int(totals.last * 1000) if totals.last else None
            by_model[model_id] = summary
        overall = self._summary(
            records,
            sum(t.success for t in self._totals.values()),
            sum(t.failed for t in self._totals.values()),
        )
        overall["historySize"] = self._records.maxlen
        overall["byModel"] = by_model
        return overall

    def totals(self, model_id: str) -> dict[str, Any]:
        t = self._totals.get(model_id) or _Totals()
        return {"success": t.success, "failed": t.failed, "successMs": t.success_ms,
                "failedMs": t.failed_ms, "queueMs": t.queue_ms, "computeMs": t.compute_ms,
                "last": t.last}
