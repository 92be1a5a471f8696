"""``make bench-ollama``: Ollama's streaming chat against the OpenAI streaming chat, on one
worker, the same model and request (SmolLM2, greedy, ``--tokens`` tokens, one client),
rounds interleaved. Tokens/s is the answer's tokens (from each route's own count) over
the time from the request to its last line. Loopback only, bounded by rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import make_repo, running_worker  # noqa: E402

MODEL = "smollm2"
ASK = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def out(line: str) -> None:
    print(line, flush=True)  # noqa: T201


def ollama_rate(client: httpx.Client, tokens: int) -> float:
    started = time.perf_counter()
    made = 0
    with client.stream("POST", "/api/chat", json={
            "model": MODEL, "messages": ASK, "stream": True,
            "options": {"temperature": 0, "num_predict": tokens}}) as r:
        for line in r.iter_lines():
            if line:
                last = json.loads(line)
                if last.get("done"):
                    made = last["eval_count"]
    return made / (time.perf_counter() - started)


def openai_rate(client: httpx.Client, tokens: int) -> float:
    started = time.perf_counter()
    made = 0
    with client.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, "stream": True, "temperature": 0,
            "max_tokens": tokens, "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    made = chunk["usage"]["completion_tokens"]
    return made / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp) / "repo", {MODEL: MODEL})
        with running_worker(repo, Path(tmp) / "w.log", preload=[MODEL]) as worker, \
                httpx.Client(base_url=worker.url, timeout=300) as client:
            ollama_rate(client, 8)  # warm both paths
            openai_rate(client, 8)
            ours, theirs = [], []
            for i in range(args.rounds):
                pair = [(ours, ollama_rate), (theirs, openai_rate)]
                for rates, measure in (pair if i % 2 == 0 else pair[::-1]):
                    rates.append(measure(client, args.tokens))
    a, b = statistics.median(ours), statistics.median(theirs)
    out(f"streaming chat, {args.tokens} tokens, median of {args.rounds}: /api/chat "
        f"{a:.1f} tok/s, /v1/chat/completions {b:.1f} tok/s, ratio x{a / b:.3f}")


if __name__ == "__main__":
    main()
