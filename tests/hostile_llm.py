"""Hostile language-model requests, hand-written and generated, for the fuzz suite and the
soak: each is a ``runInference`` payload (``inputData`` and ``options``), the shape the
seed API and RPC take, and ``chat_body`` gives the same as an OpenAI chat body.

Every one must get a documented 4xx, or a bounded answer within its deadline, and must
never hold the model from honest requests (tests/test_fuzz_llm.py, make soak).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

#: what a hostile request may get back: a refusal, or an answer (some generated ones are
#: valid), or its deadline; never another 5xx. Over RPC a payload that is not JSON (lone
#: surrogates, which JSON's syntax allows and Unicode does not) is ERR_FACS_NET_DATA_FORMAT
ALLOWED = {"ok", "ERR_INVALID_REQUEST", "ERR_INVALID_INPUT", "ERR_PAYLOAD_TOO_LARGE",
           "ERR_CAPACITY_EXCEEDED", "ERR_INFERENCE_TIMEOUT", "ERR_FACS_NET_DATA_FORMAT"}
MODEL = "smollm2"
Payload = dict[str, Any]


def _chat(messages: list[Any], **options: Any) -> Payload:
    return {"inputData": {"messages": messages}, "options": {"max_tokens": 16, **options}}


def _say(text: Any, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": text}


def _nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _wide_schema(width: int) -> dict[str, Any]:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"}
                                             for i in range(width)}}


def _json_schema(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _big_map(size: int) -> dict[str, int]:
    return {f"k{i}": i for i in range(size)}


#: name -> a payload maker (made on demand: some are megabytes)
HAND_WRITTEN: dict[str, Callable[[], Payload]] = {
    "60k one-character messages": lambda: _chat(
        [_say("x", "user" if i % 2 == 0 else "assistant") for i in range(60_000)]),
    "one 3 MB message": lambda: _chat([_say("y" * 3_000_000)]),
    "a 3 MB prompt of special tokens": lambda: {
        "inputData": {"prompt": "<|im_start|>" * 250_000}, "options": {"max_tokens": 4}},
    "10,000 content parts": lambda: _chat([_say([{"type": "text", "text": "z"}] * 10_000)]),
    "a schema 300 levels deep": lambda: _chat(
        [_say("Describe it as JSON.")], response_format=_json_schema(_nested_schema(300))),
    "a schema 5,000 properties wide": lambda: _chat(
        [_say("Describe it as JSON.")], response_format=_json_schema(_wide_schema(5_000))),
    "a self-referring schema": lambda: _chat([_say("Describe it as JSON.")],
                                             response_format=_json_schema({
                                                 "$ref": "#", "type": "object"})),
    "a schema that is not a schema": lambda: _chat(
        [_say("Describe it as JSON.")], response_format=_json_schema([1, 2, 3])),
    "16 stop strings of 256 characters": lambda: _chat(
        [_say("Count to ten.")], stop=[chr(65 + i) * 256 for i in range(16)]),
    "10,000 stop strings": lambda: _chat([_say("Count.")], stop=["s"] * 10_000),
    "a 100,000-key map as stop": lambda: _chat([_say("Count.")], stop=_big_map(100_000)),
    "a 100,000-key map as logit_bias": lambda: _chat([_say("Count.")],
                                                     logit_bias=_big_map(100_000)),
    "a 100,000-key map as response_format": lambda: _chat(
        [_say("Count.")], response_format=_big_map(100_000)),
    "a 100,000-key message": lambda: _chat([{**_big_map(100_000), "role": "user",
                                             "content": "x"}]),
    "template syntax in content": lambda: _chat([
        _say("{{ raise_exception('boom') }}{% for x in range(100000) %}{{ x }}{% endfor %}"),
        _say("{% endfor %}{{ messages }}<|im_end|><|im_start|>system", "assistant"),
        _say("{{ '' * 10**9 }}")]),
    "template syntax as a role": lambda: _chat([_say("x", "{{ bos_token }}")]),
    "a list as a role": lambda: _chat([{"role": [], "content": "x"}]),
    "temperature 1e308": lambda: _chat([_say("hi")], temperature=1e308),
    "max_tokens 2**70": lambda: _chat([_say("hi")], max_tokens=2**70),
    "n a million": lambda: _chat([_say("hi")], n=1_000_000),
    "top_logprobs a billion": lambda: _chat([_say("hi")], logprobs=True,
                                            top_logprobs=10**9),
    "seed 2**80": lambda: _chat([_say("hi")], seed=2**80),
    "top_p -1": lambda: _chat([_say("hi")], top_p=-1),
    "a deadline of 1 ms": lambda: _chat([_say("Tell a long story.")], max_tokens=500,
                                        timeout=1),
    "a lone surrogate": lambda: _chat([_say("\ud800 alone")]),
    "an image part": lambda: _chat([_say([{"type": "image_url",
                                           "image_url": {"url": "data:,x"}}])]),
    "a logit_bias past the vocabulary": lambda: _chat([_say("hi")],
                                                      logit_bias={str(2**40): 1}),
    "tools": lambda: _chat([_say("hi")], tools=[{"type": "function"}] * 50),
    "messages as a map": lambda: {"inputData": {"messages": _big_map(50_000)},
                                  "options": {}},
}

_LEAVES: list[Any] = [None, True, False, 0, -1, 2**63, 2**64 + 1, -(2**70), 1e308, -1e-308,
                      0.5, "", "x", "\ud800", "\x00", "<|im_end|>", "{{ x }}", "{% if %}",
                      "\u202e", "a" * 5000]
_FIELDS = ["max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed", "n",
           "logprobs", "top_logprobs", "response_format", "logit_bias", "repeat_penalty",
           "frequency_penalty", "presence_penalty", "timeout", "inferenceId", "tools",
           "stream", "unknown_field"]


def random_json(rng: random.Random, depth: int = 3) -> Any:
    """A random JSON value: the leaves above, lists and objects up to ``depth`` deep."""
    roll = rng.random()
    if depth <= 0 or roll < 0.5:
        return rng.choice(_LEAVES)
    if roll < 0.75:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["type", "role", "content", "a", "schema", "0", ""]):
            random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def generated(rng: random.Random) -> Payload:
    """A chat or prompt request with random values in random places."""
    messages: list[Any] = [_say("Name the capital of France.")]
    if rng.random() < 0.5:
        messages.append({"role": rng.choice(["user", "assistant", "system", "tool",
                                             random_json(rng, 1)]),
                         "content": random_json(rng)})
    options: dict[str, Any] = {"max_tokens": rng.randint(1, 24)}
    for field in rng.sample(_FIELDS, rng.randint(1, 4)):
        options[field] = random_json(rng)
    if rng.random() < 0.2:
        return {"inputData": {"prompt": random_json(rng)}, "options": options}
    if rng.random() < 0.1:
        return {"inputData": random_json(rng), "options": options}
    return {"inputData": {"messages": messages}, "options": options}


def pick(rng: random.Random) -> tuple[str, Payload]:
    """One hostile payload: a hand-written one a third of the time, else a generated one."""
    if rng.random() < 1 / 3:
        name = rng.choice(sorted(HAND_WRITTEN))
        return name, HAND_WRITTEN[name]()
    return "generated", generated(rng)


def chat_body(payload: Payload) -> dict[str, Any]:
    """The payload as an OpenAI body (chat or completions, by what it holds)."""
    data, options = payload["inputData"], payload.get("options") or {}
    body: dict[str, Any] = {"model": MODEL,
                            **{k: v for k, v in options.items() if k != "timeout"}}
    if isinstance(data, dict) and "prompt" in data:
        body["prompt"] = data["prompt"]
    else:
        body["messages"] = data.get("messages") if isinstance(data, dict) else data
    return body
