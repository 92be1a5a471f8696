"""``make bench-tools`` (also run by ``make bench-llm``): what tool calling costs.

On the bundled Qwen2.5-Coder-0.5B (greedy, one sequence of 32,768 cells), measured in
one run by the worker's own clock (``processingTime`` of the seed API):
  grammar       building the grammar of an agent-sized toolset (50 tools, 100 KB of
                schemas) in this process, with the worker's code, cold and cached
  first token   the same toolset's first request with ``max_tokens`` 1 (template,
                tokens, grammar, the prompt read, one token), then the same again
  decode        tokens/s of a forced tool call (grammar on) against plain text of the
                same length (the same prompt without tools, no grammar), each as
                (tokens - 1) / (time of N tokens - time of 1 token), median of rounds
Loopback only, bounded by rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent_tools import agent_toolset, schema_bytes  # noqa: E402
from tests.helpers import edit_spec, make_repo, running_worker  # noqa: E402

MODEL = "qwen2.5-coder"
NOTE = {"type": "function", "function": {
    "name": "save_note", "description": "Save a note",
    "parameters": {"type": "object", "properties": {"title": {"type": "string"},
                                                    "body": {"type": "string"}},
                   "required": ["title", "body"]}}}
ASK_NOTE = [{"role": "user", "content": "Save a note titled Sea whose body is a long, "
                                        "detailed story about the sea, of many sentences."}]
ASK_STORY = [{"role": "user", "content": "Write a long, detailed story about the sea, of "
                                         "many sentences."}]


def out(line: str) -> None:
    print(line, flush=True)  # noqa: T201


def _run(url: str, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    body = {"inputData": {"messages": messages},
            "options": {"temperature": 0, "timeout": 900_000, **options}}
    r = httpx.post(f"{url}/api/inference/{MODEL}", json=body, timeout=900)
    r.raise_for_status()
    answer: dict[str, Any] = r.json()
    return answer


def grammar_build() -> tuple[float, float]:
    from wrk_ai_inference.tasks.chat.formats import Hermes
    from wrk_ai_inference.tasks.chat.grammars import calls_grammar
    from wrk_ai_inference.tasks.chat.tools import toolset

    tools = toolset(agent_toolset(), "required", None)
    assert tools is not None
    args = (tools.key, tuple(t.name for t in tools.offered), "arguments",
            Hermes().root(tools, False), None)
    calls_grammar.cache_clear()
    started = time.perf_counter()
    calls_grammar(*args)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    calls_grammar(*args)
    return cold, time.perf_counter() - started


def decode_rate(url: str, messages: list[dict[str, Any]], tokens: int, **options: Any
                ) -> float:
    one = _run(url, messages, max_tokens=1, **options)["processingTime"] / 1000
    answer = _run(url, messages, max_tokens=tokens, **options)
    made = answer["result"]["usage"]["completionTokens"]
    return (made - 1) / (answer["processingTime"] / 1000 - one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    cold, warm = grammar_build()
    tools = agent_toolset()
    out(f"toolset: {len(tools)} tools, {schema_bytes(tools)} bytes of schemas")
    out(f"grammar build: cold {cold * 1000:.1f} ms, cached {warm * 1000:.3f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp) / "repo", {MODEL: MODEL})
        edit_spec(repo / MODEL, contextLength=32768, parallel=1)
        with running_worker(repo, Path(tmp) / "w.log", preload=[MODEL],
                            inference_timeout=900_000) as worker:
            for label in ("first", "again"):  # every tool offered: all of them rendered
                answer = _run(worker.url, ASK_STORY, tools=tools, tool_choice="required",
                              max_tokens=1)
                out(f"agent toolset, {label} request to its first token: "
                      f"{answer['processingTime'] / 1000:.2f} s "
                      f"({answer['result']['usage']['promptTokens']} prompt tokens)")
            forced = {"type": "function", "function": {"name": "save_note"}}
            calls, plain = [], []
            for _ in range(args.rounds):
                calls.append(decode_rate(worker.url, ASK_NOTE, args.tokens, tools=[NOTE],
                                         tool_choice=forced))
                plain.append(decode_rate(worker.url, ASK_STORY, args.tokens))
    call, text = statistics.median(calls), statistics.median(plain)
    out(f"decode, {args.tokens} tokens: tool call {call:.1f} tok/s, plain text "
          f"{text:.1f} tok/s, ratio x{call / text:.2f} (rounds: "
          f"{', '.join(f'{c:.1f}/{p:.1f}' for c, p in zip(calls, plain, strict=True))})")


if __name__ == "__main__":
    main()
