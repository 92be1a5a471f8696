"""A language model keeps its pace when another process takes one of its cores.

llama.cpp's threads meet at a barrier several times a layer. With OpenMP's default
wait, a thread that reaches the barrier first spins there for milliseconds, holding its
core, while its partner waits for a turn on the core that the other process shares:
every barrier then costs a scheduler tick, and 48 tokens took a minute instead of a
second. The other process here is a busy loop pinned to one core, in a session of its
own (as another build or container is). Times are the worker's own
(``processingTime``); the promise is a ratio measured in this run.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from .helpers import Worker, worker_serving

CORES = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with worker_serving(tmp_path_factory.mktemp("shared-cores"), {"smollm2": "smollm2"}) as w:
        yield w


def decode_seconds(url: str, deadline_s: float = 120) -> float:
    """48 greedy tokens, by the worker's clock."""
    reply = httpx.post(f"{url}/api/inference/smollm2", timeout=deadline_s + 60, json={
        "inputData": {"prompt": "The capital of France is"},
        "options": {"temperature": 0, "max_tokens": 48, "timeout": deadline_s * 1000}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"]["usage"]["completionTokens"] == 48
    return float(reply.json()["processingTime"]) / 1000


@pytest.mark.skipif(len(CORES) < 2, reason="one core: llama.cpp runs one thread, no barrier")
def test_decoding_keeps_its_pace_when_a_core_is_taken(llm: Worker) -> None:
    quiet = statistics.median(decode_seconds(llm.url) for _ in range(3))
    # ``timeout`` ends the loop even if this test process dies
    hog = subprocess.Popen(["timeout", "300", "taskset", "-c", str(CORES[-1]), sys.executable,
                            "-c", "while True: pass"], start_new_session=True)
    try:
        # half of one core gone costs about 4x; spinning at the barriers cost 100x and more
        shared = [decode_seconds(llm.url, deadline_s=20 * quiet) for _ in range(3)]
    finally:
        os.killpg(hog.pid, signal.SIGKILL)
        hog.wait()
    assert max(shared) < 20 * quiet, (quiet, shared)
