"""Prometheus metrics, recorded by the core and rendered by the HTTP transport.

Each worker owns its own registry (not the process-global one), so several
workers can live in one test process and nothing is registered twice.
Latencies are histograms, not summaries, so a fleet can aggregate percentiles.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
            60)

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the output and no dashboard reads them


#: the ``le`` labels exactly as prometheus-client's own Histogram writes them
_BOUND_LABELS = [*map(floatToGoString, _BUCKETS), "+Inf"]


class _Timings:
    """One model's histogram of one timing: counts per bucket (not cumulative) and sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(_BOUND_LABELS, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


_TIMINGS = (("wrk_inference_request_duration_seconds", "Whole request time inside the worker"),
            ("wrk_inference_queue_duration_seconds", "Time spent waiting for a running slot"),
            ("wrk_inference_compute_duration_seconds", "Time spent in the runtime"))


class RequestCollector(Collector):
    """Request counts and timings, kept as plain numbers and turned into metric families
    only when scraped.

    prometheus-client's Counter and Histogram take a lock per increment: four of them
    per request cost a noticeable share of a small model's request. Every
    request is recorded on the event loop thread, so plain integers are safe here.
    """

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}
        self.timings: dict[str, tuple[_Timings, _Timings, _Timings]] = {}

    def done(self, model: str, outcome: str, total_s: float, queue_s: float,
             compute_s: float) -> None:
        key = (model, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if outcome == "success":
            timings = self.timings.get(model)
            if timings is None:
                timings = self.timings[model] = (_Timings(), _Timings(), _Timings())
            timings[0].observe(total_s)
            timings[1].observe(queue_s)
            timings[2].observe(compute_s)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("wrk_inference_requests", "Inference requests by "
                                       "outcome (success or the ERR_ code)",
                                       labels=["model", "outcome"])
        for (model, outcome), count in list(self.outcomes.items()):
            requests.add_metric([model, outcome], count)
        yield requests
        for index, (name, documentation) in enumerate(_TIMINGS):
            family = HistogramMetricFamily(name, documentation, labels=["model"])
            for model, timings in list(self.timings.items()):
                family.add_metric([model], timings[index].buckets(), timings[index].total)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestCollector()
        r.register(self.requests)
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
        self.ttft = Histogram("wrk_llm_time_to_first_token_seconds", "From a generation's "
                              "arrival to its first text", ["model"], buckets=_BUCKETS,
                              registry=r)
        self.prompt_tokens = Counter("wrk_llm_prompt_tokens", "Prompt tokens evaluated",
                                     ["model"], registry=r)
        self.generated_tokens = Counter("wrk_llm_generated_tokens", "Tokens generated",
                                        ["model"], registry=r)
        self.draft_tokens = Counter("wrk_llm_draft_tokens", "Tokens drafted by prompt "
                                    "lookup (speculative decoding)", ["model"], registry=r)
        self.draft_accepted = Counter("wrk_llm_draft_accepted_tokens", "Drafted tokens the "
                                      "model picked (their share is the acceptance rate)",
                                      ["model"], registry=r)
        self.decode_rate = Histogram("wrk_llm_tokens_per_second", "Decoding speed of each "
                                     "generation after its first token", ["model"],
                                     buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
                                     registry=r)
        self.inter_token = Histogram("wrk_llm_inter_token_latency_seconds", "Time between "
                                     "two text deltas of one generation", ["model"],
                                     buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
                                     registry=r)
        self.audio_seconds = Counter("wrk_audio_seconds", "Seconds of audio transcribed to "
                                     "their end", ["model"], registry=r)
        self.real_time_factor = Histogram("wrk_audio_real_time_factor", "A transcription's "
                                          "processing time over its audio's duration",
                                          ["model"], buckets=(0.01, 0.02, 0.05, 0.1, 0.2,
                                                              0.5, 1, 2, 5), registry=r)
        self.sequences_running = Gauge("wrk_llm_sequences_running", "Sequences generating "
                                       "now (one per choice)", registry=r)
        self.sequences_waiting = Gauge("wrk_llm_sequences_waiting", "Generations waiting for "
                                       "a sequence slot", registry=r)
        self.kv_cache_use = Gauge("wrk_llm_kv_cache_use", "Fraction of the model's KV-cache "
                                  "cells held by running sequences", ["model"], registry=r)
        # the names the Kubernetes Gateway API inference extension scrapes (vLLM's), so its
        # endpoint picker can route to this worker as it does to vLLM
        self.gie_waiting = Gauge("vllm:num_requests_waiting", "Requests waiting: for a slot, "
                                 "or for a sequence of a language model", registry=r)
        self.gie_running = Gauge("vllm:num_requests_running", "Requests being served",
                                 registry=r)
        self.gie_kv_cache = Gauge("vllm:kv_cache_usage_perc", "KV-cache use of the fullest "
                                  "loaded language model, 1 = full", registry=r)

    def request_done(self, model: str, outcome: str, total_s: float, queue_s: float,
                     compute_s: float) -> None:
        self.requests.done(model, outcome, total_s, queue_s, compute_s)
        if outcome == "ERR_CAPACITY_EXCEEDED":
            self.rejected.inc()

    def bind_gauges(self, running: Callable[[], float], queued: Callable[[], float]) -> None:
        self.running.set_function(running)
        self.queued.set_function(queued)

    def bind_sequences(self, running: Callable[[], float], waiting: Callable[[], float]
                       ) -> None:
        self.sequences_running.set_function(running)
        self.sequences_waiting.set_function(waiting)

    def bind_router_gauges(self, waiting: Callable[[], float], running: Callable[[], float],
                           kv_cache: Callable[[], float]) -> None:
        self.gie_waiting.set_function(waiting)
        self.gie_running.set_function(running)
        self.gie_kv_cache.set_function(kv_cache)

    def bind_kv_cache(self, model: str, use: Callable[[], float]) -> None:
        self.kv_cache_use.labels(model).set_function(use)

    def unbind_kv_cache(self, model: str) -> None:
        with contextlib.suppress(KeyError):
            self.kv_cache_use.remove(model)

    def render(self) -> bytes:
        return generate_latest(self.registry)
