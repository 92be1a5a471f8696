"""``make soak``: both transports at their capacity limit for a fixed time.

A mix of good requests (their answers checked against onnxruntime and
llama-cpp-python in-process), bad requests, requests whose deadline passes, loads
and unloads, on a tensor model and a language model. It checks that
every request got exactly one answer, that none hung, that good answers are
right, that no 5xx came back outside the documented ones, and that the
worker's memory stays flat after warm-up. It prints a summary table and exits
non-zero when a promise is broken. Loopback only; bounded in time and count.

    python -m tests.soak.soak --transport http --minutes 5
    python -m tests.soak.soak --transport rack --minutes 5
    python -m tests.soak.soak --transport streams --minutes 2 --concurrency 8

``streams`` holds that many OpenAI chat streams open back to back on a model with as
many sequence slots, each checked to end with its finish reason and ``[DONE]``; some
hang up early, some are cancelled, and no sequence or KV cell may be left afterwards.
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
from wrk_ai_inference.rpc.wire import parse_reply

from .. import hostile_llm
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
    "llm": {"ok", "ERR_CAPACITY_EXCEEDED"},
    "llm-bad": {"ERR_INVALID_REQUEST", "ERR_INVALID_INPUT", "ERR_CAPACITY_EXCEEDED"},
    "llm-deadline": {"ERR_INFERENCE_TIMEOUT", "ERR_CAPACITY_EXCEEDED"},
    "llm-hostile": hostile_llm.ALLOWED,
}
KINDS = (["good"] * 12 + ["bad"] * 3 + ["deadline"] * 2 + ["cold"] * 2 + ["load", "unload"]
         + ["llm"] * 2 + ["llm-bad", "llm-deadline", "llm-hostile"])
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "The three primary colours are"]
LLM_TOKENS = 12


def expected_texts() -> dict[str, str]:
    """Greedy answers of llama-cpp-python in-process, loaded as the worker loads it."""
    import os

    from llama_cpp import Llama

    threads = len(os.sched_getaffinity(0))
    llm = Llama(str(EXAMPLES / "smollm2" / "model.gguf"), n_ctx=2048, n_threads=threads,
                n_threads_batch=threads, n_batch=512, flash_attn=True, seed=0,
                verbose=False)
    texts = {p: llm.create_completion(p, temperature=0, max_tokens=LLM_TOKENS)["choices"][0]
             ["text"] for p in PROMPTS}
    llm.close()
    return texts

Call = Callable[[str, dict[str, Any]], Awaitable[tuple[str, Any]]]


def http_caller(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(base_url=url, timeout=60,
                               limits=httpx.Limits(max_connections=256))
    codes = {"ok"}

    async def call(method: str, payload: dict[str, Any]) -> tuple[str, Any]:
        if method == "runInference":  # JSON as Python writes it (surrogates escaped)
            body = json.dumps({k: v for k, v in payload.items() if k != "modelId"})
            r = await client.post(f"/api/inference/{payload['modelId']}",
                                  content=body.encode(),
                                  headers={"content-type": "application/json"})
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
        # JSON as Python writes it: a hostile payload may hold lone surrogates, escaped
        body = json.dumps(payload).encode()
        try:
            return "ok", parse_reply(await client.request_raw(key, method, body,
                                                              timeout_ms=60_000))
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
        self.texts = expected_texts()
        self.sent = 0
        self.answered = 0
        self.outcomes: Counter[str] = Counter()
        self.wrong_answers = 0
        self.unexpected: Counter[str] = Counter()
        self.hung = 0
        self.latencies: list[float] = []
        self.memory: list[tuple[float, int]] = []
        self.each: list[list[int]] = []  # per process, for telling the bridge from the worker

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
        if kind == "llm-hostile":  # tests/hostile_llm.py: hand-written or generated
            _, payload = hostile_llm.pick(rng)
            return "runInference", {"modelId": "smollm2", **payload}, -1
        if kind.startswith("llm"):
            prompt = rng.choice(PROMPTS)
            options: dict[str, Any] = {"temperature": 0, "max_tokens": LLM_TOKENS}
            if kind == "llm-bad":
                options = rng.choice([{"temperature": 7}, {"n": 0}, {"stop": 5},
                                      {"logit_bias": {"not a token": 1}}])
            elif kind == "llm-deadline":
                options = {"max_tokens": 2000, "timeout": 100}
            return "runInference", {"modelId": "smollm2", "inputData": {"prompt": prompt},
                                    "options": options}, PROMPTS.index(prompt)
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
            elif outcome == "ok" and kind == "llm":
                if body["result"]["text"] != self.texts[PROMPTS[index]]:
                    self.wrong_answers += 1
            elif outcome == "ok" and index >= 0:
                label = int(body["result"]["predictions"][0][0]["label"])
                if label != self.expected[index]:
                    self.wrong_answers += 1

    async def sample_memory(self, stop_at: float) -> None:
        start = time.monotonic()
        while time.monotonic() < stop_at:
            each = [p.memory_info().rss if p.is_running() else 0 for p in self.processes]
            self.memory.append((time.monotonic() - start, sum(each)))
            self.each.append(each)
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
            "memoryPerProcessMB": [[round(self.each[i][j] / 2**20, 1)
                                    for j in range(len(self.processes))]
                                   for i in (len(self.each) * 3 // 10, -1)] if self.each else [],
            # every sample (seconds, MB per process), to tell a plateau from a leak
            "memorySeriesMB": [[round(t), *(round(m / 2**20, 1) for m in each)]
                               for (t, _), each in zip(self.memory, self.each, strict=True)],
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


MODELS = {"digits": "digits", "spare": "digits", "slow": "slow", "smollm2": "smollm2"}
PRELOAD = ["digits", "slow", "smollm2"]


async def soak_streams(seconds: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    """``concurrency`` OpenAI chat streams at once, one after another, for ``seconds``, on a
    model with as many sequence slots: most run to their end, some hang up after a few
    tokens, some are cancelled (``POST /api/inference/{id}/cancel``). Afterwards the
    model must hold no sequence and no KV cell."""
    repo = make_repo(tmp / "repo", {"smollm2": "smollm2"})
    spec = repo / "smollm2" / "model.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "parallel": concurrency}))
    worker = Worker(repo, tmp / "streams.log", preload=["smollm2"],
                    max_concurrent_inferences=concurrency)
    sent = completed = broken = 0
    reasons: Counter[str] = Counter()
    memory: list[tuple[float, int]] = []
    process = None
    unexpected: dict[str, int] = {}
    try:
        worker.wait_ready()
        process = psutil.Process(worker.proc.pid)
        started = time.monotonic()
        stop_at = started + seconds
        async with httpx.AsyncClient(base_url=worker.url, timeout=120) as client:
            async def one(seed: int) -> None:
                nonlocal sent, completed, broken
                rng = random.Random(seed)
                while time.monotonic() < stop_at:
                    sent += 1
                    ending = rng.choices(["end", "hang up", "cancel"], [6, 2, 2])[0]
                    after = rng.randint(1, 12)
                    body = {"model": "smollm2", "stream": True, "max_tokens": rng.randint(8, 96),
                            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
                    finish, done, deltas = None, False, 0
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: "):
                                chunk = json.loads(line[6:])
                                deltas += 1
                                if "error" in chunk:  # the deadline passed mid-stream
                                    finish = chunk["error"].get("code")
                                for choice in chunk.get("choices", []):
                                    finish = choice.get("finish_reason") or finish
                                if deltas == after and ending == "hang up":
                                    break
                                if deltas == after and ending == "cancel":
                                    ident = chunk["id"].removeprefix("chatcmpl-")
                                    await client.post(f"/api/inference/{ident}/cancel")
                    if ending == "hang up" and not done:
                        reasons["hung up"] += 1
                        completed += 1
                    elif done and r.status_code == 200 and (
                            finish in ("stop", "length", "ERR_INFERENCE_TIMEOUT")
                            or ending == "cancel"):
                        completed += 1
                        reasons[finish if ending == "end" or finish in ("stop", "length")
                                else f"cancel: {finish}"] += 1
                    else:
                        broken += 1
                        reasons[f"broken: {r.status_code}, {finish}, done={done}"] += 1

            async def sample() -> None:
                while time.monotonic() < stop_at:
                    memory.append((time.monotonic() - started, process.memory_info().rss))
                    await asyncio.sleep(2)

            await asyncio.gather(sample(), *(one(i) for i in range(concurrency)))
            for _ in range(100):  # hung-up streams end at their next token: wait for idle
                slots = (await client.get("/api/capacity")).json()["sequences"]["smollm2"]
                if slots["running"] == slots["waiting"] == 0 and slots["kvCacheUse"] == 0:
                    break
                await asyncio.sleep(0.1)
            else:
                unexpected["sequences left when idle"] = slots["running"] + slots["waiting"]
        if worker.proc.poll() is not None:
            unexpected["worker exited"] = 1
    finally:
        worker.terminate()
    warm = [m for t, m in memory if t >= seconds * 0.3] or [m for _, m in memory]
    first, last = warm[: max(1, len(warm) // 5)], warm[-max(1, len(warm) // 5):]
    growth = (np.mean(last) - np.mean(first)) / np.mean(first)
    return {"seconds": seconds, "concurrency": concurrency, "sent": sent, "answered": completed,
            "lost": sent - completed - broken, "hung": 0, "wrongAnswers": broken,
            "unexpected": unexpected, "outcomes": dict(reasons),
            "memoryAfterWarmupMB": [round(float(np.mean(first)) / 2**20, 1),
                                    round(float(np.mean(last)) / 2**20, 1)],
            "memoryGrowth": round(float(growth), 4), "latencyMs": {"p50": 0, "p99": 0}}


async def soak_http(seconds: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    repo = make_repo(tmp / "repo", MODELS)
    worker = Worker(repo, tmp / "http.log", preload=PRELOAD,
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
    repo = make_repo(tmp / "repo", MODELS)
    with local_testnet(3) as bootstrap:
        rack = Rack(tmp, "soak", bootstrap, repo, preload=PRELOAD,
                    max_concurrent_inferences=8, max_queued_inferences=16)
        try:
            status = rack.wait_ready()
            processes = [psutil.Process(rack.proc.pid), psutil.Process(status["sidecarPid"])]
            async with RpcClient(bootstrap) as client:
                soak = Soak(rpc_caller(client, status["rpcPublicKey"]), processes, seconds,
                            concurrency, slow_iterations(1.0))
                return await soak.run()
        finally:
            rack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["http", "rack", "both", "streams"],
                        default="both")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/soak.json")
    args = parser.parse_args()
    transports = ["http", "rack"] if args.transport == "both" else [args.transport]
    results: dict[str, Any] = {}
    failed = False
    for transport in transports:
        with tempfile.TemporaryDirectory() as tmp:
            runner = {"http": soak_http, "rack": soak_rack, "streams": soak_streams}[transport]
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
