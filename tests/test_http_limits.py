"""Capacity, deadlines, eviction, auth, size limits and shutdown, each on its own worker."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from .helpers import (
    failed_seconds,
    make_repo,
    running_worker,
    slow_body,
    slow_iterations,
    stats_of,
)


@pytest.fixture(scope="module")
def one_second() -> int:
    return slow_iterations(1.0)


async def _post(client: httpx.AsyncClient, path: str, body: dict) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.post(path, json=body)
    return response, time.perf_counter() - started


async def test_two_run_two_wait_two_refused(tmp_path: Path, one_second: int) -> None:
    repo = make_repo(tmp_path / "repo", {"slow": "slow"})
    with running_worker(repo, tmp_path / "w.log", preload=["slow"], max_concurrent_inferences=2,
                        max_queued_inferences=2) as w:
        async with httpx.AsyncClient(base_url=w.url, timeout=30) as client:
            tasks = [asyncio.create_task(_post(client, "/api/inference/slow",
                                               slow_body(one_second))) for _ in range(6)]
            await asyncio.sleep(0.4)
            during = (await client.get("/api/capacity")).json()
            results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        refused_s, stats = failed_seconds(w.url, "slow"), stats_of(w.url, "slow")
    assert during["currentLoad"] == 2 and during["queued"] == 2 and during["available"] is False
    codes = sorted(r.status_code for r, _ in results)
    assert codes == [200, 200, 200, 200, 429, 429]
    refused = [(r, t) for r, t in results if r.status_code == 429]
    first_done = min(t for r, t in results if r.status_code == 200)
    for response, elapsed in refused:
        assert response.json()["error"] == "ERR_CAPACITY_EXCEEDED"
        assert int(response.headers["retry-after"]) >= 1
        assert elapsed < first_done  # refused at once, not after waiting for a run
    # by the worker's own clock: the refusals took no time, and the two that waited for a
    # slot waited about one run each (a loaded machine stretches runs, never the order)
    assert refused_s < 0.5
    stats = stats["inference_stats"]
    assert stats["queue"]["count"] == stats["compute_infer"]["count"] == 4
    one_run = int(stats["compute_infer"]["ns"]) / 4
    assert int(stats["queue"]["ns"]) > one_run, stats


async def test_deadline_answers_504_and_stops_the_run(tmp_path: Path, one_second: int) -> None:
    repo = make_repo(tmp_path / "repo", {"slow": "slow"})
    with running_worker(repo, tmp_path / "w.log", preload=["slow"]) as w:
        proc = psutil.Process(w.proc.pid)
        async with httpx.AsyncClient(base_url=w.url, timeout=30) as client:
            response, elapsed = await _post(client, "/api/inference/slow",
                                            slow_body(20 * one_second, timeout_ms=300))
            assert response.status_code == 504, response.text
            assert response.json()["error"] == "ERR_INFERENCE_TIMEOUT"
            assert 0.3 <= elapsed < 0.4, elapsed
            await asyncio.sleep(1.0)
            before = proc.cpu_times()
            await asyncio.sleep(1.0)
            after = proc.cpu_times()
            busy = (after.user - before.user) + (after.system - before.system)
            assert busy < 0.1, f"worker still used {busy:.2f}s of CPU in 1s after the deadline"
            cap = (await client.get("/api/capacity")).json()
            assert cap["currentLoad"] == 0
            # the queue deadline holds too: a request that cannot start in time is a 504
            ok = await client.post("/api/inference/slow", json=slow_body(10))
            assert ok.status_code == 200


async def test_lru_eviction_pinning_and_unload_under_load(tmp_path: Path, one_second: int) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits", "digits2": "digits", "slow": "slow"})
    with running_worker(repo, tmp_path / "w.log", model_cache_size=2) as w:
        async with httpx.AsyncClient(base_url=w.url, timeout=30) as c:
            async def loaded() -> list[str]:
                return sorted((await c.get("/api/capacity")).json()["availableModels"])

            assert (await c.post("/api/models/digits/load")).status_code == 200
            assert (await c.post("/api/models/slow/load")).status_code == 200
            await c.post("/api/inference/digits", json={"inputData": [0] * 64})  # slow is LRU
            assert (await c.post("/api/models/digits2/load")).status_code == 200
            assert await loaded() == ["digits", "digits2"]

            # slow is the LRU again but busy: loading digits must evict digits2 instead
            assert (await c.post("/api/models/slow/load")).status_code == 200  # evicts digits
            running = asyncio.create_task(_post(c, "/api/inference/slow", slow_body(one_second)))
            await asyncio.sleep(0.2)
            await c.post("/api/inference/digits2", json={"inputData": [0] * 64})
            assert (await c.post("/api/models/digits/load")).status_code == 200
            assert await loaded() == ["digits", "slow"]
            response, _ = await running
            assert response.status_code == 200

            # unload waits for running requests; new ones are refused meanwhile
            running = asyncio.create_task(_post(c, "/api/inference/slow", slow_body(one_second)))
            await asyncio.sleep(0.2)
            unload = asyncio.create_task(_post(c, "/api/models/slow/unload", {}))
            await asyncio.sleep(0.2)
            refused = await c.post("/api/inference/slow", json=slow_body(10))
            assert refused.status_code == 409
            assert refused.json()["error"] == "ERR_MODEL_NOT_AVAILABLE"
            (inference, inf_t), (unloaded, unl_t) = await running, await unload
            assert inference.status_code == 200 and unloaded.status_code == 200
            assert unloaded.json()["message"] == "Model unloaded"
            assert 0.2 + unl_t >= inf_t - 0.05  # the unload answered after the run ended
            assert await loaded() == ["digits"]


async def test_cache_full_of_busy_models_refuses_load(tmp_path: Path, one_second: int) -> None:
    repo = make_repo(tmp_path / "repo", {"slow": "slow", "digits": "digits"})
    with running_worker(repo, tmp_path / "w.log", model_cache_size=1, preload=["slow"]) as w:
        async with httpx.AsyncClient(base_url=w.url, timeout=30) as c:
            running = asyncio.create_task(_post(c, "/api/inference/slow", slow_body(one_second)))
            await asyncio.sleep(0.2)
            r = await c.post("/api/models/digits/load")
            assert r.status_code == 429 and r.json()["error"] == "ERR_CAPACITY_EXCEEDED"
            assert (await running)[0].status_code == 200
            assert (await c.post("/api/models/digits/load")).status_code == 200


def test_auth_and_payload_limit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits"})
    key = "s3cret-key-for-tests"
    with running_worker(repo, tmp_path / "w.log", preload=["digits"], api_keys=[key],
                        max_request_bytes=2048) as w, httpx.Client(base_url=w.url) as c:
        body = {"inputData": [0] * 64}
        for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"X-API-Key": "nope"}):
            r = c.post("/api/inference/digits", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "ERR_UNAUTHORIZED"
        assert c.get("/api/capacity").status_code == 401
        assert c.get("/health").status_code == 200  # probes need no key
        good = {"Authorization": f"Bearer {key}"}
        assert c.post("/api/inference/digits", json=body, headers=good).status_code == 200
        assert c.post("/api/inference/digits", json=body, headers={"X-API-Key": key}
                      ).status_code == 200
        big = {"inputData": [0] * 2000}
        r = c.post("/api/inference/digits", json=big, headers=good)
        assert r.status_code == 413 and r.json()["error"] == "ERR_PAYLOAD_TOO_LARGE"

        def chunks():  # no Content-Length: the limit must hold while streaming
            for _ in range(10):
                yield b" " * 1000

        r = c.post("/api/inference/digits", content=chunks(), headers=good)
        assert r.status_code == 413 and r.json()["error"] == "ERR_PAYLOAD_TOO_LARGE"
        assert c.post("/api/inference/digits", json=body, headers=good).status_code == 200
        assert key not in w.logs()


async def test_sigterm_during_load_answers_every_admitted_request(tmp_path: Path,
                                                                   one_second: int) -> None:
    repo = make_repo(tmp_path / "repo", {"slow": "slow"})
    with running_worker(repo, tmp_path / "w.log", preload=["slow"], max_concurrent_inferences=2,
                        max_queued_inferences=10) as w:
        async with httpx.AsyncClient(base_url=w.url, timeout=30) as c:
            tasks = [asyncio.create_task(_post(c, "/api/inference/slow",
                                               slow_body(one_second // 2))) for _ in range(8)]
            await asyncio.sleep(0.3)
            assert (await c.get("/api/capacity")).json()["queued"] == 6
            w.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            health = await c.get("/health")
            late = await c.post("/api/inference/slow", json=slow_body(10))
            results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        code = await asyncio.to_thread(w.proc.wait, 30)
    assert [r.status_code for r, _ in results] == [200] * 8
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert late.status_code == 503 and late.json()["error"] == "ERR_NOT_READY"
    assert code == 0, w.logs()
    assert any(line.get("msg") == "draining" for line in w.log_lines())
