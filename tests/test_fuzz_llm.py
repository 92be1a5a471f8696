"""Hostile language-model requests (tests/hostile_llm.py) sent at once with honest ones.

Every hand-written hostile body and a bounded number of generated ones go to one worker
serving SmolLM2, through the seed API and the OpenAI routes, from three threads, while
a fourth sends honest greedy chats back to back. Each hostile request must get a
documented 4xx, or a bounded answer (200, or 504 at its deadline); each honest one must
answer the same text as alone, within its deadline, throughout; the model is idle and
the worker well afterwards. The counts are printed.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from wrk_ai_inference.errors import HTTP_STATUS

from .helpers import Worker, make_repo, running_worker
from .hostile_llm import ALLOWED, HAND_WRITTEN, MODEL, chat_body, generated

QUESTION = [{"role": "user", "content": "Name the capital of France."}]
GENERATED = 120  # generated bodies, besides every hand-written one
DEADLINE_S = 30.0  # inferenceTimeout: the longest a request may take to be answered


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("fuzz-llm")
    repo = make_repo(root / "repo", {MODEL: MODEL})
    with running_worker(repo, root / "w.log", preload=[MODEL]) as w:
        yield w


def _code(response: httpx.Response) -> str:
    """The outcome as the soak names it: ok, or the worker's error code."""
    if response.status_code == 200:
        return "ok"
    body = response.json()
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else error
    assert code in HTTP_STATUS and HTTP_STATUS[code] == response.status_code, body
    return str(code)


def _send(client: httpx.Client, payload: dict[str, Any], openai: bool) -> httpx.Response:
    """JSON as Python writes it (lone surrogates escaped, as a hostile client may)."""
    if openai:
        body = chat_body(payload)
        route = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    else:
        body, route = payload, f"/api/inference/{MODEL}"
    return client.post(route, content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})


def test_hostile_requests_beside_honest_ones(llm: Worker) -> None:
    rng = random.Random(24)
    work = [(name, make()) for name, make in sorted(HAND_WRITTEN.items())]
    work += [("generated", generated(rng)) for _ in range(GENERATED)]
    rng.shuffle(work)
    with httpx.Client(base_url=llm.url, timeout=120) as client:
        honest = client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 8})
        expected = honest.json()["choices"][0]["message"]["content"]
        assert "Paris" in expected
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    slowest = 0.0
    done = threading.Event()
    honest_times: list[float] = []
    honest_wrong: list[str] = []

    def attack(item: tuple[str, dict[str, Any]], index: int) -> None:
        nonlocal slowest
        name, payload = item
        with httpx.Client(base_url=llm.url, timeout=120) as client:
            started = time.perf_counter()
            code = _code(_send(client, payload, openai=index % 2 == 1))
            took = time.perf_counter() - started
        slowest = max(slowest, took)
        outcomes[code] += 1
        if code not in ALLOWED or took > DEADLINE_S + 10:
            unexpected.append(f"{name}: {code} after {took:.1f} s")

    def keep_honest() -> None:
        with httpx.Client(base_url=llm.url, timeout=120) as client:
            while not done.is_set():
                started = time.perf_counter()
                reply = client.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 8})
                honest_times.append(time.perf_counter() - started)
                if reply.status_code != 200 or \
                        reply.json()["choices"][0]["message"]["content"] != expected:
                    honest_wrong.append(reply.text[:200])

    honest_thread = threading.Thread(target=keep_honest)
    honest_thread.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(attack, work, range(len(work))))
    finally:
        done.set()
        honest_thread.join(150)
    print(f"\n{len(work)} hostile requests ({len(HAND_WRITTEN)} hand-written, "  # noqa: T201
          f"{GENERATED} generated): {dict(sorted(outcomes.items()))}; slowest answer "
          f"{slowest:.2f} s. Honest chats beside them: {len(honest_times)}, wrong or failed "
          f"{len(honest_wrong)}, slowest {max(honest_times):.2f} s")
    assert not unexpected, unexpected
    assert not honest_wrong, honest_wrong
    assert len(honest_times) >= 3 and max(honest_times) < DEADLINE_S
    with httpx.Client(base_url=llm.url, timeout=30) as client:
        waited = time.monotonic() + 10
        while True:
            capacity = client.get("/api/capacity").json()
            slots = capacity["sequences"][MODEL]
            if capacity["currentLoad"] == 0 and slots["running"] == slots["waiting"] == 0:
                break
            assert time.monotonic() < waited, capacity
            time.sleep(0.1)
        assert client.get("/health").status_code == 200
    assert "ERR_INTERNAL" not in llm.logs()
