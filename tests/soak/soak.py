"""``make soak``: both transports at their capacity limit for a fixed time.

A mix of good requests (their answers checked against onnxruntime in-process),
bad requests, requests whose deadline passes, loads and unloads. It checks that
every request got exactly one answer, that none hung, that good answers are
right, that no 5xx came back outside the documented ones, and that the
worker's memory stays flat after warm-up. It prints a summary table and exits
non-zero when a promise is broken. Loopback only; bounded in time and count.

    python -m tests.soak.soak --transport http --minutes 5
    python -m tests.soak.soak --transport rack --minutes 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil

from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.examples import digits_split
from wrk_ai_inference.rpc.client import RpcClient

from ..helpers import EXAMPLES, Worker, make_repo, slow_body, slow_iterations
from ..rack_helpers import Rack, local_testnet

# what each kind of request may legitimately get back, besides its own answer
ALLOWED = {
    "good": {"ok", "ERR_CAPACITY_EXCEEDED"},
    "bad": {"ERR_INVALID_INPUT", "ERR_CAPACITY_EXCEEDED"},
    "deadline": {"ERR_INFERENCE_TIMEOUT", "ERR_CAPACITY_EXCEEDED"},
    "cold": {"ok", "ERR_MODEL_NOT_AVAILABLE", "ERR_CAPACITY_EXCEEDED"},
    "load": {"ok", "ERR_CAPACITY_EXCEEDED"},
    "unload": {"ok"},
}
KINDS = ["good"] * 12 + ["bad"] * 3 + ["deadline"] * 2 + ["cold"] * 2 + ["load", "unload"]

Call = Callable[[str, dict[str, Any]], Awaitable[tuple[str, Any]]]


def http_caller(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(base_url=url, timeout=60,
                               limits=httpx.Limits(max_connections=256))
    codes = {"ok"}

    async def call(method: str, payload: dict[str, Any]) -> tuple[str, Any]:
        if method == "runInference":
            r = await client.post(f"/api/inference/{payload['modelId']}",
                                  json={k: v for k, v in payload.items() if k != "modelId"})
        else:
            verb = "load" if method == "loadModel" else "unload"
            r = await client.post(f"/api/models/{payload['modelId']}/{verb}")
        body = r.json()
        if r.status_code == 200:
            return "ok", body
        code = body.get("error", f"HTTP {r.status_code}")
        codes.add(code)
        if r.status_code >= 500 and code not in ("ERR_INFERENCE_TIMEOUT",):
            return f"5xx:{code}", body
        return code, body

    return call, client.aclose


def rpc_caller(client: RpcClient, key: str) -> Call:
    async def call(method: str, payload: dict[str, Any]) -> tuple[str, Any]:
        try:
            return "ok", await client.request(key, method, payload, timeout_ms=60_000)
        except InferenceError as exc:
            return exc.code, exc.message

    return call


class Soak:
    def __init__(self, call: Call, processes: list[psutil.Process], seconds: float,
                 concurrency: int, one_second: int) -> None:
        self.call = call
        self.processes = processes
        self.seconds = seconds
        self.concurrency = concurrency
        self.one_second = one_second
        _, self.x_test, _, _ = digits_split()
        session = ort.InferenceSession(str(EXAMPLES / "digits" / "model.onnx"))
        self.expected = session.run(None, {"input": self.x_test})[0].argmax(axis=1)
        self.sent = 0
        self.answered = 0
        self.outcomes: Counter[str] = Counter()
        self.wrong_answers = 0
        self.unexpected: Counter[str] = Counter()
        self.hung = 0
        self.latencies: list[float] = []
        self.memory: list[tuple[float, int]] = []

    def request(self, rng: random.Random, kind: str) -> tuple[str, dict[str, Any], int]:
        i = rng.randrange(len(self.x_test))
        if kind == "good":
            return "runInference", {"modelId": "digits",
                                    "inputData": [self.x_test[i].tolist()]}, i
        if kind == "bad":
            return "runInference", {"modelId": "digits", "inputData": rng.choice(
                [[1, 2, 3], [[0] * 64, [0] * 63], ["x"] * 64, {"nope": [1]}])}, -1
        if kind == "deadline":
            return "runInference", {"modelId": "slow", **slow_body(self.one_second, 100)}, -1
        if kind == "cold":
            return "runInference", {"modelId": "spare", "inputData": [self.x_test[i].tolist()]}, i
        return ("loadModel" if kind == "load" else "unloadModel"), {"modelId": "spare"}, -1

    async def client(self, seed: int, stop_at: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            kind = rng.choice(KINDS)
            method, payload, index = self.request(rng, kind)
            self.sent += 1
            started = time.monotonic()
            try:
                outcome, body = await asyncio.wait_for(self.call(method, payload), 90)
            except TimeoutError:
                self.hung += 1
                continue
            self.answered += 1
            self.latencies.append(time.monotonic() - started)
            self.outcomes[f"{kind}:{outcome}"] += 1
            if outcome not in ALLOWED[kind]:
                self.unexpected[f"{kind}:{outcome}"] += 1
            elif outcome == "ok" and index >= 0:
                label = int(body["result"]["predictions"][0][0]["label"])
                if label != self.expected[index]:
                    self.wrong_answers += 1

    async def sample_memory(self, stop_at: float) -> None:
        start = time.monotonic()
        while time.monotonic() < stop_at:
            rss = sum(p.memory_info().rss for p in self.processes if p.is_running())
            self.memory.append((time.monotonic() - start, rss))
            await asyncio.sleep(2)

    async def run(self) -> dict[str, Any]:
        stop_at = time.monotonic() + self.seconds
        await asyncio.gather(self.sample_memory(stop_at),
                             *(self.client(s, stop_at) for s in range(self.concurrency)))
        warm = [m for t, m in self.memory if t >= self.seconds * 0.3]
        first, last = warm[: max(1, len(warm) // 5)], warm[-max(1, len(warm) // 5):]
        growth = (np.mean(last) - np.mean(first)) / np.mean(first) if warm else 0.0
        lat = np.asarray(self.latencies) * 1000
        return {
            "seconds": self.seconds, "concurrency": self.concurrency, "sent": self.sent,
            "answered": self.answered, "lost": self.sent - self.answered - self.hung,
            "hung": self.hung, "wrongAnswers": self.wrong_answers,
            "unexpected": dict(self.unexpected), "outcomes": dict(sorted(self.outcomes.items())),
            "memoryAfterWarmupMB": [round(float(np.mean(first)) / 2**20, 1),
                                    round(float(np.mean(last)) / 2**20, 1)],
            "memoryGrowth": round(float(growth), 4),
            "latencyMs": {"p50": round(float(np.percentile(lat, 50)), 2),
                          "p99": round(float(np.percentile(lat, 99)), 2)},
        }


def verdict(report: dict[str, Any]) -> list[str]:
    broken = []
    if report["lost"] or report["hung"]:
        broken.append(f"lost {report['lost']}, hung {report['hung']}")
    if report["wrongAnswers"]:
        broken.append(f"{report['wrongAnswers']} wrong answers")
    if report["unexpected"]:
        broken.append(f"unexpected outcomes {report['unexpected']}")
    if report["memoryGrowth"] >= 0.05:
        broken.append(f"memory grew {report['memoryGrowth']:.1%} after warm-up")
    return broken


def table(transport: str, report: dict[str, Any]) -> str:
    rows = [("transport", transport), ("duration s", report["seconds"]),
            ("concurrent clients", report["concurrency"]), ("requests sent", report["sent"]),
            ("answered exactly once", report["answered"]), ("lost", report["lost"]),
            ("hung", report["hung"]), ("wrong answers", report["wrongAnswers"]),
            ("unexpected outcomes", report["unexpected"] or 0),
            ("memory after warm-up MB (first, last)", report["memoryAfterWarmupMB"]),
            ("memory growth", f"{report['memoryGrowth']:.2%}"),
            ("latency ms p50 / p99", f"{report['latencyMs']['p50']} / "
                                     f"{report['latencyMs']['p99']}")]
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines.append("")
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in report["outcomes"].items()))
    return "\n".join(lines)


async def soak_http(seconds: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    repo = make_repo(tmp / "repo", {"digits": "digits", "spare": "digits", "slow": "slow"})
    worker = Worker(repo, tmp / "http.log", preload=["digits", "slow"],
                    max_concurrent_inferences=8, max_queued_inferences=16)
    try:
        worker.wait_ready()
        call, close = http_caller(worker.url)
        try:
            soak = Soak(call, [psutil.Process(worker.proc.pid)], seconds, concurrency,
                        slow_iterations(1.0))
            return await soak.run()
        finally:
            await close()
    finally:
        worker.terminate()


async def soak_rack(seconds: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    repo = make_repo(tmp / "repo", {"digits": "digits", "spare": "digits", "slow": "slow"})
    with local_testnet(3) as bootstrap:
        rack = Rack(tmp, "soak", bootstrap, repo, preload=["digits", "slow"],
                    max_concurrent_inferences=8, max_queued_inferences=16)
        try:
            status = rack.wait_ready()
            processes = [psutil.Process(rack.proc.pid), psutil.Process(status["bridgePid"])]
            async with RpcClient(bootstrap) as client:
                soak = Soak(rpc_caller(client, status["rpcPublicKey"]), processes, seconds,
                            concurrency, slow_iterations(1.0))
                return await soak.run()
        finally:
            rack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["http", "rack", "both"], default="both")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/soak.json")
    args = parser.parse_args()
    transports = ["http", "rack"] if args.transport == "both" else [args.transport]
    results: dict[str, Any] = {}
    failed = False
    for transport in transports:
        with tempfile.TemporaryDirectory() as tmp:
            runner = soak_http if transport == "http" else soak_rack
            report = asyncio.run(runner(args.minutes * 60, args.concurrency, Path(tmp)))
        results[transport] = report
        broken = verdict(report)
        sys.stdout.write(table(transport, report) + "\n")
        sys.stdout.write(("BROKEN: " + "; ".join(broken) if broken else "all promises held")
                         + "\n\n")
        failed |= bool(broken)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
