"""Hostile language-model requests never hold a model hostage.

A real worker process serving SmolLM2; each hostile body is sent while an honest greedy
chat follows one second later on the same model. The promise: the hostile request gets
a documented 4xx at once (a prompt that cannot fit the context is refused before it is
rendered or tokenised), the honest one answers the same text within a few seconds of
its normal time, and the model is idle again straight after.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psutil
import pytest

from wrk_ai_inference.tasks.chat.grammars import schema_grammar as grammar

from .helpers import Worker, make_repo, running_worker

QUESTION = [{"role": "user", "content": "Name the capital of France."}]
MAX_REQUEST_BYTES = 64 << 20  # config/common.json's maxRequestBytes


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("hostile-llm")
    repo = make_repo(root / "repo", {"smollm2": "smollm2"})
    with running_worker(repo, root / "w.log", preload=["smollm2"]) as w:
        yield w


def honest(url: str) -> tuple[str, float]:
    """A greedy chat: its text and how long it took by the worker's own clock (its
    ``processingTime``: a loaded machine slows this test's process too)."""
    reply = httpx.post(f"{url}/api/inference/smollm2", timeout=120, json={
        "inputData": {"messages": QUESTION}, "options": {"temperature": 0, "max_tokens": 24}})
    assert reply.status_code == 200, reply.text
    return reply.json()["result"]["text"], reply.json()["processingTime"] / 1000


def conversation(count: int) -> list[dict[str, str]]:
    """``count`` one-character messages, user and assistant in turn."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"}
            for i in range(count)]


def idle(url: str) -> bool:
    capacity = httpx.get(f"{url}/api/capacity", timeout=10).json()
    slots = capacity["sequences"]["smollm2"]
    return capacity["currentLoad"] == 0 and slots["running"] == slots["waiting"] == 0


HOSTILE: dict[str, Any] = {
    "60k messages": lambda: {"messages": conversation(60_000)},
    "600k messages": lambda: {"messages": conversation(600_000)},
    "one message near maxRequestBytes": lambda: {
        "messages": [{"role": "user", "content": "x" * (MAX_REQUEST_BYTES - 4096)}]},
    "a prompt near maxRequestBytes": lambda: {"prompt": "y" * (MAX_REQUEST_BYTES - 4096)},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_prompt_never_holds_the_model(llm: Worker, name: str) -> None:
    normal_text, normal_s = honest(llm.url)
    fields = HOSTILE[name]()
    route = "/v1/completions" if "prompt" in fields else "/v1/chat/completions"
    body = orjson.dumps({"model": "smollm2", "max_tokens": 8, **fields})
    assert len(body) <= MAX_REQUEST_BYTES
    outcome: dict[str, Any] = {}

    def attack() -> None:
        started = time.perf_counter()
        reply = httpx.post(f"{llm.url}{route}", content=body, timeout=120,
                           headers={"content-type": "application/json"})
        outcome.update(status=reply.status_code, body=reply.json(),
                       seconds=time.perf_counter() - started)

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(1.0)
    text, took = honest(llm.url)
    attacker.join(120)
    assert not attacker.is_alive()
    assert outcome["status"] == 400, outcome
    message = outcome["body"]["error"]["message"]
    assert "context" in message or "values outside regular arrays" in message, outcome
    assert text == normal_text
    normal_s = max(normal_s, honest(llm.url)[1])  # alone, before and after: the slower
    assert took < normal_s + 5.0, (took, normal_s)
    waited = time.monotonic() + 2.0
    while not idle(llm.url):
        assert time.monotonic() < waited, "the model is still busy 2 s after the refusal"
        time.sleep(0.05)
    print(f"\n{name}: refused in {outcome['seconds']:.2f} s ({len(body) / 1e6:.1f} MB); "  # noqa: T201
          f"honest chat {took:.2f} s against {normal_s:.2f} s alone")


def worker_cpu(pid: int) -> float:
    """CPU seconds the worker and its helper processes (body decoders) have used."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


MANY_KEYS: dict[str, Any] = {
    "logit_bias of 200,000 entries (2.9 MB)": lambda: {
        "messages": QUESTION, "logit_bias": {str(100_000 + i): -0.5 for i in range(200_000)}},
    "60,000 top-level keys beside inputData (under 1 MB: decoded on the loop)": lambda: {
        "messages": QUESTION, "inputData": [1], **{f"k{i}": 1 for i in range(60_000)}},
    "an unknown field of 5 million keys (maxRequestBytes)": lambda: {
        "messages": QUESTION, "extra": {f"{i:07d}": 1 for i in range(5_000_000)}},
}


@pytest.mark.parametrize("name", list(MANY_KEYS))
def test_a_body_with_many_keys_is_refused_in_linear_time(llm: Worker, name: str) -> None:
    """simdjson finds a key by scanning: walked key by key, such a body took minutes. The
    worker may spend 1 s of CPU, or what one linear parse of the same body into Python
    objects costs this process now, whichever is more: a slower or busier machine
    raises both alike (the 5-million-key body once took the worker over 1 s right after
    a CI run, against about a quarter of that alone)."""
    body = orjson.dumps({"model": "smollm2", **MANY_KEYS[name]()})
    assert len(body) <= MAX_REQUEST_BYTES
    started = time.process_time()
    orjson.loads(body)
    linear = time.process_time() - started
    for _ in range(2):  # the decoding processes are started (a big body, soon refused)
        httpx.post(f"{llm.url}/v1/chat/completions", timeout=60, json={
            "model": "smollm2", "messages": QUESTION, "pad": "x" * (2 << 20)})
    before = worker_cpu(llm.proc.pid)
    reply = httpx.post(f"{llm.url}/v1/chat/completions", content=body, timeout=300,
                       headers={"content-type": "application/json"})
    used = worker_cpu(llm.proc.pid) - before
    assert reply.status_code == 400, reply.text
    print(f"\n{name}: refused after {used:.2f} s of worker CPU ({len(body) / 1e6:.1f} MB; "  # noqa: T201
          f"one parse here {linear:.2f} s): {reply.json()['error']['message'][:90]}")
    assert used < max(1.0, linear), (used, linear)


def _loop_lags_over_quarter_second(url: str) -> float:
    """How many times the worker's event loop was late by more than 0.25 s (its own
    histogram, wrk_event_loop_lag_seconds)."""
    total = over = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("wrk_event_loop_lag_seconds_count"):
            total = float(line.split()[1])
        elif line.startswith('wrk_event_loop_lag_seconds_bucket{le="0.25"}'):
            over = float(line.split()[1])
    return total - over


def test_a_wide_schema_never_stalls_the_event_loop(llm: Worker) -> None:
    """Turning a schema of 900 optional properties into a grammar takes seconds (the
    converter is quadratic in them): made on the loop it stalled every request; now it
    is made beside the prompt, off the loop, and a second request with the same schema
    reuses it."""
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"}
                                               for i in range(900)}}
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 4, "temperature": 0,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "wide", "schema": schema}}}
    before = _loop_lags_over_quarter_second(llm.url)
    timings = []
    for _ in range(2):  # the second with the grammar made
        started = time.perf_counter()
        reply = httpx.post(f"{llm.url}/v1/chat/completions", json=body, timeout=120)
        timings.append(time.perf_counter() - started)
        assert reply.status_code == 200, reply.text
    stalls = _loop_lags_over_quarter_second(llm.url) - before
    print(f"\n900-property schema: answered in {timings[0]:.2f} s, again in "  # noqa: T201
          f"{timings[1]:.2f} s; event-loop stalls over 0.25 s: {stalls:.0f}")
    assert stalls == 0


def test_a_grammar_is_made_once_per_schema() -> None:
    constraint = '{"properties": {"a": {"type": "integer"}}, "type": "object"}'
    before = grammar.cache_info()
    assert grammar(constraint) is grammar(constraint)
    after = grammar.cache_info()
    assert after.hits - before.hits >= 1 and after.misses - before.misses <= 1
