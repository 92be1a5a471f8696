"""``make bench-llm``: one generation at a time, the worker against what it wraps.

Measured in one run, on the bundled SmolLM2 GGUF, with the same prompt and settings:
  in-process   llama-cpp-python called directly (the ceiling for one sequence)
  llama.server ``python -m llama_cpp.server`` (what a user would run instead), in a venv
               of its own (.venv-llm-bench) with llama-cpp-python's ``server`` extra
  worker       this worker's OpenAI API (``/v1/completions``)
Each round measures every contender in turn, in a different order each round; a
request streams ``--tokens`` tokens greedily (``ignore_eos`` is not an OpenAI field,
so the prompt is one the model does not end early). Every request's prompt begins
with a number never used before, so no contender answers from a cached prompt. Prints
the medians of time to first token and decode tokens per second, and the worker's
ratios to the others.
Loopback only, bounded by the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import free_port, server  # noqa: E402

GGUF = ROOT / "examples" / "models" / "smollm2" / "model.gguf"
SERVER_VENV = ROOT / ".venv-llm-bench"
PROMPT = "Write a long story about a dragon who learns to bake bread. Once upon a time"
Sample = tuple[float, float, int]  # time to first token, decode tokens/s, tokens
_count = iter(range(1_000_000))


def _prompt() -> str:
    return f"Story {next(_count)}. {PROMPT}"


def _threads() -> int:
    return len(os.sched_getaffinity(0))


def in_process(tokens: int) -> Callable[[], Sample]:
    from llama_cpp import Llama

    llm = Llama(str(GGUF), n_ctx=2048, n_threads=_threads(), n_threads_batch=_threads(),
                n_batch=512, seed=0, verbose=False)

    def one() -> Sample:
        started = time.perf_counter()
        first = last = 0.0
        count = 0
        for chunk in llm.create_completion(_prompt(), max_tokens=tokens, temperature=0,
                                           stream=True):
            now = time.perf_counter()
            if chunk["choices"][0]["text"]:
                count += 1
                first = first or now
                last = now
        return _sample(started, first, last, count)

    return one


def _sample(started: float, first: float, last: float, count: int) -> Sample:
    rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return first - started, rate, count


def over_http(url: str, model: str, tokens: int) -> Callable[[], Sample]:
    client = httpx.Client(timeout=120)
    def one() -> Sample:
        body = {"model": model, "prompt": _prompt(), "max_tokens": tokens, "temperature": 0,
                "stream": True}
        started = time.perf_counter()
        first = last = 0.0
        count = 0
        with client.stream("POST", url + "/v1/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("text"):
                    now = time.perf_counter()
                    count += 1
                    first = first or now
                    last = now
        return _sample(started, first, last, count)

    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    contenders: dict[str, Callable[[], Sample]] = {"in-process": in_process(args.tokens)}
    with contextlib.ExitStack() as stack:
        port = free_port()
        stack.enter_context(server(
            [sys.executable, "-m", "wrk_ai_inference.cli", "http", "--port", str(port),
             "--preload", "smollm2", "--health-check-interval", "60000"],
            f"http://127.0.0.1:{port}/health"))
        contenders["worker"] = over_http(f"http://127.0.0.1:{port}", "smollm2", args.tokens)
        server_python = SERVER_VENV / "bin" / "python"
        if server_python.exists():
            port = free_port()
            stack.enter_context(server(
                [str(server_python), "-m", "llama_cpp.server", "--model", str(GGUF),
                 "--model_alias", "smollm2", "--n_ctx", "2048", "--n_threads",
                 str(_threads()), "--n_threads_batch", str(_threads()), "--n_batch", "512",
                 "--host", "127.0.0.1", "--port", str(port)],
                f"http://127.0.0.1:{port}/v1/models"))
            contenders["llama.server"] = over_http(f"http://127.0.0.1:{port}", "smollm2",
                                                   args.tokens)
        else:
            print(f"llama_cpp.server skipped: {SERVER_VENV} is missing (make bench-llm makes it)")  # noqa: T201
        names = list(contenders)
        for name in names:  # warm-up: first loads, caches, page faults
            contenders[name]()
        samples: dict[str, list[Sample]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                samples[name].append(contenders[name]())
    report(samples, args, results_dir)


def report(samples: dict[str, list[Sample]], args: Any, results_dir: Path) -> None:
    summary = {}
    print(f"one client, {args.tokens} tokens, {args.rounds} rounds (medians, [min-max])")  # noqa: T201
    for name, rows in samples.items():
        ttft = [r[0] * 1000 for r in rows]
        rate = [r[1] for r in rows]
        summary[name] = {"ttftMs": statistics.median(ttft), "tokensPerS": statistics.median(rate),
                         "tokens": [r[2] for r in rows]}
        print(f"  {name:13s} ttft {statistics.median(ttft):7.1f} ms [{min(ttft):.1f}-"  # noqa: T201
              f"{max(ttft):.1f}]  decode {statistics.median(rate):6.1f} tok/s "
              f"[{min(rate):.1f}-{max(rate):.1f}]  tokens {sorted({r[2] for r in rows})}")
    worker = summary["worker"]
    for other in ("in-process", "llama.server"):
        if other in summary:
            base = summary[other]
            print(f"  worker / {other}: decode x{worker['tokensPerS'] / base['tokensPerS']:.3f}"  # noqa: T201
                  f", ttft x{worker['ttftMs'] / base['ttftMs']:.3f}")
    (results_dir / "llm-bench.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
