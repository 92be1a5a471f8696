"""Request metrics are counted by hand for speed; they must read as prometheus-client's own."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from wrk_ai_inference.metrics import _BUCKETS, RequestCollector


def test_request_metrics_render_exactly_as_prometheus_client_counters_and_histograms() -> None:
    ours = RequestCollector()
    reference = CollectorRegistry()
    requests = Counter("wrk_inference_requests", "Inference requests by outcome (success or "
                       "the ERR_ code)", ["model", "outcome"], registry=reference)
    timings = [Histogram(name, text, ["model"], buckets=_BUCKETS, registry=reference)
               for name, text in (
                   ("wrk_inference_request_duration_seconds",
                    "Whole request time inside the worker"),
                   ("wrk_inference_queue_duration_seconds",
                    "Time spent waiting for a running slot"),
                   ("wrk_inference_compute_duration_seconds", "Time spent in the runtime"))]
    rng = random.Random(5)
    # every bucket edge exactly, values between them, beyond the last bucket, and zero
    edges = [*_BUCKETS, 0.0, 61.0, 1e-9]
    for i in range(3000):
        model = rng.choice(["digits", "mlp"])
        outcome = "success" if i % 7 else rng.choice(["ERR_INVALID_INPUT", "ERR_NOT_FOUND"])
        values = [rng.choice(edges) if rng.random() < 0.3 else rng.expovariate(20)
                  for _ in range(3)]
        ours.done(model, outcome, *values)
        requests.labels(model, outcome).inc()
        if outcome == "success":
            for histogram, value in zip(timings, values, strict=True):
                histogram.labels(model).observe(value)
    mine = CollectorRegistry()
    mine.register(ours)
    assert generate_latest(mine).decode().splitlines() == \
        generate_latest(reference).decode().splitlines()
