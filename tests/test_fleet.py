"""Three rack workers on a local testnet, one killed with SIGKILL under load and brought
back: through FleetClient and through the Node example, every request is answered once.

Runs are counted on the workers, from their request journals (a start line per run, an
answer line per run that answered: ``rack_helpers.count_runs``), so a killed worker's
runs count too."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.fleet import FleetClient
from wrk_ai_inference.rpc.client import RpcClient

from .helpers import ROOT, make_repo, slow_body, slow_iterations
from .rack_helpers import NODE_MODULES, Rack, count_runs, local_testnet

DIGIT = [[0.0] * 64]
VICTIM = 1


class Fleet:
    """Three racks serving digits (and slow, cold), with debug lines to count runs."""

    def __init__(self, root: Path, bootstrap: list[str]) -> None:
        self.root, self.bootstrap = root, bootstrap
        self.repo = make_repo(root / "repo", {"digits": "digits", "slow": "slow"})
        self.racks = [self._start(i) for i in range(3)]
        for rack in self.racks:
            rack.wait_ready()

    def _start(self, i: int) -> Rack:
        return Rack(self.root, f"w{i}", self.bootstrap, self.repo, preload=["digits"],
                    debug=True)

    def kill(self, i: int, strand_answers: bool = False) -> str:
        """SIGKILL a worker and its sidecar (``Rack.kill``); its public key."""
        key = self.racks[i].key
        self.racks[i].kill(strand_answers)
        return key

    def restart(self, i: int) -> float:
        self.racks[i] = self._start(i)
        self.racks[i].wait_ready()
        return time.monotonic()

    def restart_later(self, i: int, delay_s: float) -> threading.Thread:
        thread = threading.Thread(target=lambda: (time.sleep(delay_s), self.restart(i)))
        thread.start()
        return thread

    def runs(self, prefix: str) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """(runs that answered, runs started) per requestId, over every process."""
        return count_runs([(rack.log_path, rack.journal_path) for rack in self.racks], prefix)

    def answered_since_restart(self, i: int) -> int:
        return self.racks[i].logs_since_start().count('"outcome":"ok"')

    def stop(self) -> None:
        for rack in self.racks:
            rack.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    with local_testnet(3) as bootstrap:
        workers = Fleet(root, bootstrap)
        try:
            yield workers
        finally:
            workers.stop()


def assert_exactly_once(fleet: Fleet, answers: dict[str, str], prefix: str) -> None:
    ended, started = fleet.runs(prefix)
    twice = {rid: ended[rid] for rid in answers if ended[rid] != 1}
    assert not twice, f"requests not run to an answer exactly once: {list(twice.items())[:5]}"
    # and nothing of ours ran that was not answered
    assert sum(ended.values()) == len(answers)
    assert all(started[rid] >= 1 for rid in answers)


async def test_fleet_client_survives_a_killed_worker(fleet: Fleet) -> None:
    answers: dict[str, str] = {}
    failures: list[str] = []
    killed_at: list[float] = []
    async with FleetClient(fleet.bootstrap) as client:
        warm = await client.run_inference("digits", DIGIT, request_id="py-warm")
        answers["py-warm"] = warm["worker"]  # it warmed the lookup and connections

        async def lane(n: int) -> None:
            k = 0
            deadline = time.monotonic() + 40  # bounded, whatever happens
            while time.monotonic() < deadline:
                restarted_and_used = killed_at and fleet.answered_since_restart(VICTIM) >= 20
                if restarted_and_used and len(answers) > 2_000:
                    return
                rid = f"py-{n}-{k}"
                k += 1
                try:
                    result = await client.run_inference("digits", DIGIT, request_id=rid)
                    assert rid not in answers
                    answers[rid] = result["worker"]
                except InferenceError as exc:
                    failures.append(f"{rid}: {exc.code} {exc.message}")
                if n == 0 and len(answers) >= 600 and not killed_at:
                    await asyncio.to_thread(fleet.kill, VICTIM, True)
                    killed_at.append(time.monotonic())
                    fleet.restart_later(VICTIM, 1.0)

        await asyncio.gather(*(lane(n) for n in range(8)))
        stats = client.stats()
    assert killed_at and not failures, failures[:3]
    assert_exactly_once(fleet, answers, "py-")
    async with RpcClient(fleet.bootstrap) as rpc:
        victim = await rpc.request(fleet.racks[VICTIM].key, "getStats", {})
    # the stranded answers came back from the journal: the case this test is for ran
    assert victim["requestIds"]["replayed"] >= 1, victim["requestIds"]
    assert fleet.answered_since_restart(VICTIM) >= 20, "the restarted worker took no load"
    assert sum(s["answered"] for s in stats.values()) == len(answers)


def test_node_example_survives_a_killed_worker(fleet: Fleet) -> None:
    plan = {"bootstrap": fleet.bootstrap, "modelId": "digits", "inputData": DIGIT,
            "requests": 100_000, "concurrency": 8, "prefix": "node", "seconds": 40}
    node = shutil.which("node")
    assert node is not None
    proc = subprocess.Popen([node, str(ROOT / "examples" / "fleet-client.js"), json.dumps(plan)],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                            env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert proc.stdout is not None and proc.stdin is not None
    lines: list[dict[str, Any]] = []
    restarter: threading.Thread | None = None
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            if len(lines) == 1_000:
                fleet.kill(VICTIM)
                restarter = fleet.restart_later(VICTIM, 1.0)
            if restarter is not None and not restarter.is_alive() and not proc.stdin.closed \
                    and fleet.answered_since_restart(VICTIM) >= 20:
                proc.stdin.close()  # enough: the example stops sending and prints its counts
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    results = [line for line in lines if "requestId" in line]
    errors = [line for line in results if "error" in line]
    assert restarter is not None and not errors, errors[:3]
    answers = {line["requestId"]: line["worker"] for line in results}
    assert len(answers) == len(results)
    assert_exactly_once(fleet, answers, "node-")
    assert fleet.answered_since_restart(VICTIM) >= 20, "the restarted worker took no load"


async def test_errors_name_every_worker_tried(fleet: Fleet) -> None:
    async with FleetClient(fleet.bootstrap) as client:
        with pytest.raises(InferenceError) as missing:
            await client.run_inference("no-such-model", DIGIT, timeout_ms=3_000)
        assert missing.value.code == "ERR_MODEL_NOT_AVAILABLE"
        assert "ai-inference:no-such-model" in missing.value.message

        # a worker that dies holding the call and stays dead: the call may have run, so
        # it is not sent elsewhere, and the error says which worker and why
        holder = fleet.racks[2]
        async with RpcClient(fleet.bootstrap) as rpc:
            await rpc.request(holder.key, "loadModel", {"modelId": "slow"})
        await asyncio.sleep(0.5)  # the announcement
        body = slow_body(slow_iterations(2.0))
        call = asyncio.create_task(client.run_inference("slow", body["inputData"],
                                                        timeout_ms=8_000))
        await asyncio.sleep(0.5)
        key = await asyncio.to_thread(fleet.kill, 2)
        with pytest.raises(InferenceError) as lost:
            await call
        assert lost.value.code in ("ERR_RPC_UNAVAILABLE", "ERR_INFERENCE_TIMEOUT")
        assert key[:12] in lost.value.message and "not resent" in lost.value.message
        assert [t["worker"] for t in lost.value.details["tried"]] == [key]
    await asyncio.to_thread(fleet.restart, 2)
