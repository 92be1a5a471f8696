"""Prometheus metrics, recorded by the core and rendered by the HTTP transport.

Each worker owns its own registry (not the process-global one), so several
workers can live in one test process and nothing is registered twice.
Latencies are histograms, not summaries, so a fleet can aggregate percentiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
            60)

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the output and no dashboard reads them


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], Any] = {}
        self._timings: dict[str, tuple[Any, Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("wrk_inference_requests", "Inference requests by outcome "
                                "(success or the ERR_ code)", ["model", "outcome"], registry=r)
        self.latency = Histogram("wrk_inference_request_duration_seconds",
                                 "Whole request time inside the worker", ["model"],
                                 buckets=_BUCKETS, registry=r)
        self.queue_time = Histogram("wrk_inference_queue_duration_seconds",
                                    "Time spent waiting for a running slot", ["model"],
                                    buckets=_BUCKETS, registry=r)
        self.compute_time = Histogram("wrk_inference_compute_duration_seconds",
                                      "Time spent in the runtime", ["model"], buckets=_BUCKETS,
                                      registry=r)
        self.batch_rows = Histogram("wrk_inference_batch_rows", "Rows per runtime call made by "
                                    "the dynamic batcher", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.loop_lag = Histogram("wrk_event_loop_lag_seconds", "How late a 50 ms timer fires on "
                                  "the event loop: anything blocking the loop shows here",
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                           1), registry=r)
        self.running = Gauge("wrk_inference_running", "Inferences running now", registry=r)
        self.queued = Gauge("wrk_inference_queued", "Inferences waiting for a slot", registry=r)
        self.overrunning = Gauge("wrk_inference_overrunning",
                                 "Runs still going after their request's deadline answered the "
                                 "client (their slots stay counted)", registry=r)
        self.rejected = Counter("wrk_inference_rejected", "Requests refused at admission "
                                "because running and queue were full", registry=r)
        self.loaded = Gauge("wrk_model_loaded", "1 while the model is loaded", ["model"],
                            registry=r)
        self.model_memory = Gauge("wrk_model_memory_bytes", "Measured memory of a loaded model",
                                  ["model"], registry=r)
        self.loads = Counter("wrk_model_loads", "Model loads by outcome", ["model", "outcome"],
                             registry=r)

    def request_done(self, model: str, outcome: str, total_s: float, queue_s: float,
                     compute_s: float) -> None:
        """Count one request; label children are cached (labels() takes a lock each call)."""
        key = (model, outcome)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(model, outcome)
        counter.inc()
        if outcome == "success":
            timings = self._timings.get(model)
            if timings is None:
                timings = self._timings[model] = (self.latency.labels(model),
                                                  self.queue_time.labels(model),
                                                  self.compute_time.labels(model))
            timings[0].observe(total_s)
            timings[1].observe(queue_s)
            timings[2].observe(compute_s)
        elif outcome == "ERR_CAPACITY_EXCEEDED":
            self.rejected.inc()

    def bind_gauges(self, running: Callable[[], float], queued: Callable[[], float]) -> None:
        self.running.set_function(running)
        self.queued.set_function(queued)

    def render(self) -> bytes:
        return generate_latest(self.registry)
