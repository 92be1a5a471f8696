"""At most once per requestId: joins while running, the same answer after, refusals
forgotten; over RPC with a real rack worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wrk_ai_inference.engine.request_ids import RequestIds
from wrk_ai_inference.engine.request_journal import RequestJournal
from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.rpc.client import RpcClient

from .helpers import make_repo, slow_body, slow_iterations
from .rack_helpers import local_testnet, running_rack


async def test_a_repeat_joins_the_running_call_and_later_gets_its_answer() -> None:
    ids = RequestIds(limit=100, ttl_s=60)
    runs = 0

    async def work() -> dict[str, int]:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return {"run": runs}

    assert ids.state("r1") == "unknown"
    first = asyncio.create_task(ids.once("r1", "m", work))
    await asyncio.sleep(0)
    assert ids.state("r1") == "running"
    both = await asyncio.gather(first, ids.once("r1", "m", work))
    assert ids.state("r1") == "done"
    again = await ids.once("r1", "m", work)
    assert both == [{"run": 1}, {"run": 1}] and again == {"run": 1} and runs == 1
    assert (ids.joined, ids.replayed) == (1, 1)
    with pytest.raises(InferenceError, match="was used for model 'm'"):
        await ids.once("r1", "other", work)


async def test_a_refusal_is_forgotten_and_a_failure_is_remembered() -> None:
    ids = RequestIds(limit=100, ttl_s=60)
    calls: list[str] = []

    def failing(code: str):  # type: ignore[no-untyped-def]
        async def work() -> None:
            calls.append(code)
            raise InferenceError(code, "no")
        return work

    for _ in range(2):
        with pytest.raises(InferenceError):
            await ids.once("busy", "m", failing("ERR_CAPACITY_EXCEEDED"))
        assert ids.state("busy") == "unknown"  # refused: it did not run
        with pytest.raises(InferenceError):
            await ids.once("bad", "m", failing("ERR_INFERENCE_FAILED"))
    # the refusal ran twice (it did not run the first time); the failure once
    assert calls == ["ERR_CAPACITY_EXCEEDED", "ERR_INFERENCE_FAILED", "ERR_CAPACITY_EXCEEDED"]


async def test_the_journal_carries_the_window_over_a_kill(tmp_path: Path) -> None:
    """What a killed worker answered is replayed by the next process; what it was running
    is ``lost`` (and runs afresh if sent again); refusals stay forgotten."""
    path = tmp_path / "requests.journal"
    ids = RequestIds(limit=100, ttl_s=60)
    ids.attach(RequestJournal(path, 100))

    async def ok() -> dict[str, str]:
        return {"answer": "first"}

    async def bad() -> None:
        raise InferenceError("ERR_INVALID_INPUT", "not an image")

    async def full() -> None:
        raise InferenceError("ERR_CAPACITY_EXCEEDED", "busy")

    await ids.once("done", "m", ok)
    for work in (bad, full):
        with pytest.raises(InferenceError):
            await ids.once(work.__name__, "m", work)
    hanging = asyncio.create_task(ids.once("running", "m", asyncio.Event().wait))
    await asyncio.sleep(0)
    # the process "dies" here: nothing more is written; the next one reads the file
    again = RequestIds(limit=100, ttl_s=60)
    again.attach(RequestJournal(path, 100))
    assert [again.state(r) for r in ("done", "bad", "full", "running", "never")] == \
        ["done", "done", "unknown", "lost", "unknown"]

    async def must_not_run() -> None:
        raise AssertionError("a remembered id ran again")

    assert await again.once("done", "m", must_not_run) == {"answer": "first"}
    with pytest.raises(InferenceError, match="not an image"):
        await again.once("bad", "m", must_not_run)
    assert await again.once("running", "m", ok) == {"answer": "first"}  # its one answer
    assert again.state("running") == "done"
    hanging.cancel()
    ids.close()
    again.close()


def test_the_journal_rotates_into_one_previous_generation(tmp_path: Path) -> None:
    path = tmp_path / "requests.journal"
    journal = RequestJournal(path, limit=10)
    journal.open()
    for i in range(35):
        journal.started(f"r{i}", "m")
        journal.ended(f"r{i}", {"i": i})
    journal.close()
    recovered = journal.recover()
    # at most two generations of 10 calls each: the newest calls, never the oldest
    assert 10 <= len(recovered) <= 20 and "r34" in recovered and "r0" not in recovered
    assert recovered["r34"].result == {"i": 34}
    path.write_bytes(path.read_bytes() + b'{"id": "torn", "mod')  # a write cut by a kill
    assert "torn" not in journal.recover()


async def test_the_window_is_bounded_by_count_and_age() -> None:
    ids = RequestIds(limit=1000, ttl_s=0.2)

    async def work() -> list[float]:
        return [0.0] * 10

    for i in range(5000):
        await ids.once(f"id-{i}", "m", work)
    assert len(ids) == 1000
    await asyncio.sleep(0.25)
    await ids.once("late", "m", work)
    assert len(ids) == 1


async def test_a_duplicate_request_id_over_rpc_runs_once(tmp_path: Path) -> None:
    """Sent while the first call runs, and again after it ended: one execution
    (getStats' executions), the same answer three times."""
    repo = make_repo(tmp_path / "repo", {"slow": "slow"})
    body = {"modelId": "slow", "requestId": "order-42", **slow_body(slow_iterations(1.0))}
    with local_testnet(3) as bootstrap, \
            running_rack(tmp_path, "rack-ids", bootstrap, repo, preload=["slow"]) as rack:
        async with RpcClient(bootstrap) as client:
            before = (await client.request(rack.key, "getStats", {}))["executions"]
            first = asyncio.create_task(client.request(rack.key, "runInference", body))
            await asyncio.sleep(0.3)  # the first is running
            joined = await client.request(rack.key, "runInference", body)
            answer = await first
            later = await client.request(rack.key, "runInference", body)
            stats = await client.request(rack.key, "getStats", {})
            states = [(await client.request(rack.key, "checkRequest", {"requestId": r}))["state"]
                      for r in ("order-42", "never-sent")]
    assert answer == joined == later and answer["requestId"] == "order-42"
    assert stats["executions"].get("slow", 0) - before.get("slow", 0) == 1
    assert stats["requestIds"] == {"remembered": 1, "joined": 1, "replayed": 1}
    assert states == ["done", "unknown"]
