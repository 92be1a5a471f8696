"""Dynamic batching: real ONNX models through the engine, plus fault doubles for the
failure cases (a runtime that raises or stalls on demand)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from wrk_ai_inference.config import Settings
from wrk_ai_inference.engine.batcher import Batcher
from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.models.spec import TensorSpec
from wrk_ai_inference.runtimes.base import ModelSession, RunHandle, Tensors
from wrk_ai_inference.worker import InferenceWorker

from .helpers import EXAMPLES, make_repo, slow_body, slow_iterations


async def started_worker(repo: Path, **settings: object) -> InferenceWorker:
    worker = InferenceWorker(Settings(modelRepository=str(repo),  # type: ignore[arg-type]
                                      **settings))
    await worker.start()
    await worker.wait_ready()
    return worker


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(tmp_path: Path
                                                                          ) -> None:
    worker = await started_worker(make_repo(tmp_path, {"mlp": "mlp"}), preload=["mlp"],
                                  maxConcurrentInferences=64)
    try:
        rows = np.random.default_rng(3).standard_normal((48, 1024)).astype(np.float32)
        results = await asyncio.gather(*(worker.run_inference("mlp", [r.tolist()])
                                         for r in rows))
        # each request's answer equals its row run alone, up to the kernels' rounding
        alone = ort.InferenceSession(str(EXAMPLES / "mlp" / "model.onnx"))
        for row, got in zip(rows, results, strict=True):
            want = alone.run(None, {"input": row[np.newaxis]})[0][0]
            assert np.allclose(got["result"]["outputs"]["output"][0], want, rtol=1e-5,
                               atol=1e-5)
        batcher = worker.engine.batcher(worker.models.entry("mlp"))
        assert batcher is not None and batcher.rows == 48
        assert batcher.batches < 48, "48 concurrent requests ran one by one"
    finally:
        await worker.stop()


async def test_bad_requests_do_not_poison_their_batch_mates(tmp_path: Path) -> None:
    worker = await started_worker(make_repo(tmp_path, {"digits": "digits"}),
                                  preload=["digits"], maxConcurrentInferences=64)
    try:
        good = [worker.run_inference("digits", [[float(i % 16)] * 64]) for i in range(20)]
        bad = [worker.run_inference("digits", [[1.0] * 63]) for _ in range(5)]
        outcomes = await asyncio.gather(*good, *bad, return_exceptions=True)
        assert all(isinstance(o, dict) and o["success"] for o in outcomes[:20])
        assert all(isinstance(o, InferenceError) and o.code == "ERR_INVALID_INPUT"
                   for o in outcomes[20:])
    finally:
        await worker.stop()


async def test_lone_request_is_not_delayed_and_unbatchable_models_run_directly(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"digits": "digits", "slow": "slow"})
    spec = (repo / "digits" / "model.json").read_text().replace('"batchDelayMs": 1',
                                                                '"batchDelayMs": 500')
    (repo / "digits" / "model.json").write_text(spec)
    worker = await started_worker(repo, preload=["digits", "slow"])
    try:
        await worker.run_inference("digits", [[0.0] * 64])
        started = time.perf_counter()
        await worker.run_inference("digits", [[0.0] * 64])
        assert time.perf_counter() - started < 0.1  # nobody else was coming: no 500 ms wait
        assert worker.engine.batcher(worker.models.entry("slow")) is None  # no batch dim
        await worker.run_inference("slow", slow_body(10)["inputData"])
    finally:
        await worker.stop()


async def test_tiny_models_batch_under_load_and_run_on_the_loop(tmp_path: Path) -> None:
    """digits runs in microseconds: its runs stay on the loop thread (a hop to a thread
    would cost more), concurrent requests still share runtime calls, and a batch is
    judged by its rows: one expected to take long goes to a thread."""
    # inlineRunMicros ten times the default: a digits run takes tens of microseconds, so
    # the relations below hold on a machine several times slower (or busier) than this
    worker = await started_worker(make_repo(tmp_path, {"digits": "digits"}),
                                  preload=["digits"], maxConcurrentInferences=64,
                                  inlineRunMicros=3000)
    try:
        ran_on: list[str] = []
        run = worker.engine._run

        def spy(*args: Any) -> Any:
            ran_on.append(threading.current_thread().name)
            return run(*args)

        worker.engine._run = spy  # type: ignore[method-assign]
        await worker.run_inference("digits", [[1.0] * 64])
        await worker.run_inference("digits", [[2.0] * 64])
        assert ran_on[-1] == threading.main_thread().name, ran_on
        session = worker.models.entry("digits").session
        assert session is not None and worker.engine.inline(session)
        batcher = worker.engine.batcher(worker.models.entry("digits"))
        assert batcher is not None
        for _ in range(6):  # the time per row settles on what batches really cost
            ran_on.clear()
            rows_before, batches_before = batcher.rows, batcher.batches
            results = await asyncio.gather(*(worker.run_inference(
                "digits", [[float(i % 16)] * 64]) for i in range(40)))
            assert all(r["success"] for r in results)
            assert batcher.rows - rows_before == 40
            assert batcher.batches - batches_before < 10, "40 requests ran one by one"
        assert set(ran_on) == {threading.main_thread().name}, ran_on
        assert not worker.engine.inline(session, rows=100_000)
    finally:
        await worker.stop()


async def test_event_loop_stays_responsive_during_long_runs(tmp_path: Path) -> None:
    worker = await started_worker(make_repo(tmp_path, {"slow": "slow", "mlp": "mlp"}),
                                  preload=["slow", "mlp"])
    try:
        one_second = slow_iterations(1.0)  # calibrates on this thread: before measuring
        long_run = asyncio.create_task(worker.run_inference(
            "slow", slow_body(int(one_second * 1.5))["inputData"]))
        rows = np.zeros((1, 1024), np.float32).tolist()
        await asyncio.gather(*(worker.run_inference("mlp", rows) for _ in range(64)))
        await long_run
        worker.max_loop_lag = 0.0
        worker.metrics.loop_lag = type(worker.metrics.loop_lag)(  # fresh histogram
            "lag_probe", "probe", buckets=(0.01, 0.05, 0.1, 1), registry=None)
        probe = asyncio.create_task(worker.run_inference(
            "slow", slow_body(one_second)["inputData"]))
        load = [worker.run_inference("mlp", rows) for _ in range(64)]
        await asyncio.gather(probe, *load)
        # a run on the loop would stall it for the whole run (about a second); so would a
        # full garbage collection over the start-up objects, which the worker freezes
        assert worker.max_loop_lag < 0.1, worker.max_loop_lag
        assert gc.get_freeze_count() > 0
    finally:
        await worker.stop()


class _Double(ModelSession):
    """x -> 2x on [-1, 4], sleeping ``delay`` per run; raises when a row starts with -999.
    The handle is honoured like onnxruntime's terminate."""

    def __init__(self, delay: float) -> None:
        self.inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
        self.outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1, 4])]
        self.delay = delay
        self.runs: list[int] = []
        self.spans: list[tuple[float, float]] = []

    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        x = feeds["x"]
        self.runs.append(len(x))
        started = time.perf_counter()
        self.spans.append((started, started + self.delay))
        deadline = started + self.delay
        while time.perf_counter() < deadline:
            if handle.cancelled:
                raise InferenceError("ERR_INFERENCE_TIMEOUT", "terminated")
            time.sleep(0.002)
        if (x[:, 0] == -999).any():
            raise InferenceError("ERR_INFERENCE_FAILED", "the runtime failed: boom")
        return {"y": x * 2}


def _run(session: ModelSession, feeds: Tensors, handle: RunHandle) -> Tensors:
    return session.run(feeds, handle)


async def _batcher(session: _Double, delay_s: float = 0.02, parallel: int = 1,
                   on_the_way: int = 1) -> Batcher:
    return Batcher("double", session, max_batch=8, delay_s=delay_s,
                   executor=__import__("concurrent.futures").futures.ThreadPoolExecutor(2),
                   parallel=parallel, on_the_way=lambda: on_the_way, run=_run)


async def test_while_a_batch_runs_the_next_one_fills_for_its_delay_and_runs_alongside() -> None:
    """A lone request goes at once; requests trickling in while it runs are gathered for
    the batch delay into one batch (not run one by one), which runs alongside the first."""
    session = _Double(delay=0.3)
    batcher = await _batcher(session, delay_s=0.1, parallel=2, on_the_way=0)
    first = batcher.submit({"x": np.ones((1, 4), np.float32)}, lambda: None)
    await asyncio.sleep(0.02)
    later = []
    for v in (2.0, 3.0, 4.0):
        later.append(batcher.submit({"x": np.full((1, 4), v, np.float32)}, lambda: None))
        await asyncio.sleep(0.01)
    outcomes = await asyncio.gather(first, *later)
    assert [o["y"][0, 0] for o in outcomes] == [2.0, 4.0, 6.0, 8.0]
    assert session.runs == [1, 3], session.runs
    (_, first_end), (second_start, _) = session.spans
    assert second_start < first_end, "the second batch waited for the first to finish"
    await batcher.close()


async def test_runtime_error_fails_only_its_batch() -> None:
    session = _Double(delay=0.1)
    batcher = await _batcher(session)
    ended: list[int] = []
    poisoned = [batcher.submit({"x": np.full((1, 4), v, np.float32)}, lambda: ended.append(1))
                for v in (1.0, -999.0, 3.0)]
    await asyncio.sleep(0.05)  # the first batch is running; these form the next one
    healthy = [batcher.submit({"x": np.full((1, 4), v, np.float32)}, lambda: ended.append(1))
               for v in (4.0, 5.0)]
    outcomes = await asyncio.gather(*poisoned, *healthy, return_exceptions=True)
    for failed in outcomes[:3]:
        assert isinstance(failed, InferenceError) and "batch of 3" in failed.message
    assert [o["y"][0, 0] for o in outcomes[3:]] == [8.0, 10.0]  # type: ignore[index]
    assert session.runs == [3, 2] and len(ended) == 5
    await batcher.close()


async def test_deadline_is_per_request_and_abandoned_batches_stop() -> None:
    session = _Double(delay=0.5)
    batcher = await _batcher(session)
    ended: list[int] = []
    short = batcher.submit({"x": np.ones((1, 4), np.float32)}, lambda: ended.append(1))
    long = batcher.submit({"x": np.ones((1, 4), np.float32)}, lambda: ended.append(1))
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(short), 0.1)
    batcher.abandon(short)
    assert time.perf_counter() - started < 0.2
    assert (await long)["y"][0, 0] == 2.0  # its batch-mate still got its answer
    # a batch whose every request gave up is stopped in the runtime
    lone = batcher.submit({"x": np.ones((1, 4), np.float32)}, lambda: ended.append(1))
    await asyncio.sleep(0.05)
    batcher.abandon(lone)
    t0 = time.perf_counter()
    while len(ended) < 3 and time.perf_counter() - t0 < 2:
        await asyncio.sleep(0.01)
    assert len(ended) == 3 and time.perf_counter() - t0 < 0.2
    await batcher.close()
