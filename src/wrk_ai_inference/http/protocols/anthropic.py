"""Anthropic's Messages API under /v1/messages, as the ``anthropic`` client calls it.

Translation only: a Messages request becomes the core's conversation (OpenAI-shaped
messages, tools and tool choice) and one worker call; the worker's events become
Anthropic's content blocks and stream events. Errors are Anthropic's
``{"type": "error", "error": {"type", "message"}}`` with the worker's code beside.
``x-api-key`` is one of the headers the API-key guard reads; ``anthropic-version`` and
``anthropic-beta`` are accepted and not acted on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi.responses import Response

from ...errors import InferenceError
from ...worker import InferenceWorker
from ..responses import JSON
from ..routing import Call, EventStream, Route, Table
from .shared import arguments_object, first_event, json_body

_FIELDS = {"model", "max_tokens", "system", "messages", "tools", "tool_choice",
           "stop_sequences", "temperature", "top_p", "top_k", "metadata", "stream"}
_COUNT_FIELDS = {"model", "system", "messages", "tools", "tool_choice"}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
         "cancelled": "end_turn"}


def _invalid(message: str) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message)


def _text(blocks: Any, where: str) -> str:
    """A string, or text blocks joined (the only content a system prompt or tool result
    may carry here)."""
    if isinstance(blocks, str):
        return blocks
    if isinstance(blocks, list) and all(isinstance(b, dict) and b.get("type") == "text"
                                        and isinstance(b.get("text"), str) for b in blocks):
        return "".join(b["text"] for b in blocks)
    raise _invalid(f"{where} must be a string or a list of text blocks")


def _message(message: Any, index: int) -> list[dict[str, Any]]:
    """One Anthropic message as core messages: tool results become tool messages (first,
    as they answer the turn before), tool_use blocks the assistant's tool calls."""
    where = f"messages[{index}]"
    if not isinstance(message, dict) or set(message) - {"role", "content"}:
        raise _invalid(f"{where} must be {{role, content}}")
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise _invalid(f"{where}.role must be 'user' or 'assistant'")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _invalid(f"{where}.content must be a string or a list of content blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for k, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("input"),
                                                                        dict):
                raise _invalid(f"{where}.content[{k}]: tool_use needs name and input")
            calls.append({"id": str(block.get("id", f"toolu_{index}_{k}")),
                          "type": "function",
                          "function": {"name": block["name"], "arguments": block["input"]}})
        elif kind == "tool_result" and role == "user":
            result = block.get("content", "")
            text = _text(result, f"{where}.content[{k}].content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id")),
                            "content": text})
        else:
            raise _invalid(f"{where}.content[{k}]: block type {kind!r} is not supported "
                           "here (text, tool_use from the assistant, tool_result from the "
                           "user)")
    out = list(results)
    if calls:
        out.append({"role": "assistant", "content": "".join(texts), "tool_calls": calls})
    elif texts or not results:
        out.append({"role": role, "content": "".join(texts)})
    return out


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _invalid("tools must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom") \
                or "input_schema" not in tool:
            raise _invalid(f"tools[{i}]: only client tools {{name, description, "
                           "input_schema}} are supported (no server tools)")
        out.append({"type": "function", "function": {
            "name": tool.get("name"), "description": tool.get("description", ""),
            "parameters": tool["input_schema"]}})
    return out


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """Anthropic's tool_choice as the core's (and whether calls may come in parallel)."""
    if choice is None:
        return None, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    parallel = None if not isinstance(choice, dict) else (
        not choice["disable_parallel_tool_use"] if "disable_parallel_tool_use" in choice
        else None)
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise _invalid('tool_choice must be {"type": "auto" | "any" | "none"} or {"type": '
                   '"tool", "name"}')


def _request(payload: dict[str, Any], fields: set[str]) -> tuple[str, dict[str, Any],
                                                                   dict[str, Any]]:
    """(model, the core's input, the core's options) of a Messages request."""
    unknown = sorted(set(payload) - fields)
    if unknown:
        raise _invalid(f"fields this worker does not support: {unknown}")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model (a string) is required")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list")
    conversation: list[dict[str, Any]] = []
    if payload.get("system") is not None:
        conversation.append({"role": "system", "content": _text(payload["system"], "system")})
    for i, message in enumerate(messages):
        conversation += _message(message, i)
    choice, parallel = _tool_choice(payload.get("tool_choice"))
    options: dict[str, Any] = {"tools": _tools(payload.get("tools")), "tool_choice": choice,
                               "parallel_tool_calls": parallel,
                               "stop": payload.get("stop_sequences"),
                               "temperature": payload.get("temperature"),
                               "top_p": payload.get("top_p"), "top_k": payload.get("top_k")}
    if "max_tokens" in fields:
        max_tokens = payload.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _invalid("max_tokens (a whole number of at least 1) is required")
        options["max_tokens"] = max_tokens
    temperature = payload.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(
            temperature, int | float) or not 0 <= temperature <= 1):
        raise _invalid("temperature must be a number in [0, 1]")
    return model, {"messages": conversation}, {k: v for k, v in options.items()
                                              if v is not None}


def _usage(usage: dict[str, int]) -> dict[str, int]:
    return {"input_tokens": usage.get("promptTokens", 0),
            "output_tokens": usage.get("completionTokens", 0)}


def _stop(choice: dict[str, Any]) -> tuple[str, str | None]:
    stop = choice.get("stopSequence")
    if stop is not None:
        return "stop_sequence", stop
    return _STOP.get(choice["finishReason"], "end_turn"), None


def _blocks(choice: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if choice["text"] or not choice.get("toolCalls"):
        blocks.append({"type": "text", "text": choice["text"]})
    for call in choice.get("toolCalls", ()):
        blocks.append({"type": "tool_use", "id": _tool_id(call["id"]),
                       "name": call["function"]["name"],
                       "input": arguments_object(call["function"]["arguments"])})
    return blocks


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **body}) \
        + b"\n\n"


async def _messages(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    model, input_data, options = _request(payload, _FIELDS)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream must be true or false")
    if not stream:
        answer = await worker.run_inference(model, input_data, options)
        choice = answer["result"]["choices"][0]
        reason, sequence = _stop(choice)
        return JSON({"id": "msg_" + answer["inferenceId"], "type": "message",
                     "role": "assistant", "model": model, "content": _blocks(choice),
                     "stop_reason": reason, "stop_sequence": sequence,
                     "usage": _usage(answer["result"]["usage"])})
    events = worker.stream_inference(model, input_data, options)
    start = await first_event(events)
    return EventStream(_stream(model, start, events))


async def _stream(model: str, start: dict[str, Any],
                  events: AsyncGenerator[dict[str, Any], None]) -> AsyncGenerator[bytes, None]:
    """The worker's events as Anthropic's: a text block opened at the first text, one
    tool_use block per call (its input in ``input_json_delta`` pieces as the core sends
    them), then the stop."""
    yield _event("message_start", {"message": {
        "id": "msg_" + start["inferenceId"], "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}}})
    yield _event("ping", {})
    block = -1
    text_open = False
    finish: dict[str, Any] = {"finishReason": "stop"}
    async with contextlib.aclosing(events):
        try:
            async for event in events:
                kind = event["type"]  # one choice: this API has no n
                if kind == "delta" and event["text"]:
                    if not text_open:
                        block += 1
                        text_open = True
                        yield _event("content_block_start", {
                            "index": block, "content_block": {"type": "text", "text": ""}})
                    yield _event("content_block_delta", {
                        "index": block, "delta": {"type": "text_delta", "text": event["text"]}})
                elif kind == "toolCallStart":  # a tool_use block begins
                    if text_open:
                        yield _event("content_block_stop", {"index": block})
                        text_open = False
                    block += 1
                    tool = event["call"]
                    yield _event("content_block_start", {"index": block, "content_block": {
                        "type": "tool_use", "id": _tool_id(tool["id"]), "name": tool["name"],
                        "input": {}}})
                elif kind == "toolCallArguments":
                    yield _event("content_block_delta", {"index": block, "delta": {
                        "type": "input_json_delta", "partial_json": event["call"]["arguments"]}})
                elif kind == "toolCall":
                    yield _event("content_block_stop", {"index": block})
                elif kind == "finish":
                    finish = event
                elif kind == "end":
                    if block < 0:  # an empty answer still has its one text block
                        block, text_open = 0, True
                        yield _event("content_block_start", {
                            "index": 0, "content_block": {"type": "text", "text": ""}})
                    if text_open:
                        yield _event("content_block_stop", {"index": block})
                    reason, sequence = _stop({"finishReason": finish["finishReason"],
                                              "stopSequence": finish.get("stopSequence")})
                    yield _event("message_delta", {
                        "delta": {"stop_reason": reason, "stop_sequence": sequence},
                        "usage": _usage(event["usage"])})
                    yield _event("message_stop", {})
        except InferenceError as exc:
            yield _event("error", {"error": exc.to_anthropic_dict()["error"]})


async def _count_tokens(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    model, input_data, options = _request(payload, _COUNT_FIELDS)
    return JSON({"input_tokens": await worker.count_tokens(model, input_data, options)})


_ERRORS = (400, 401, 404, 409, 413, 429, 500, 503, 504)

TABLE = Table("anthropic", "Anthropic Messages API", (
    Route("POST", "/v1/messages", _messages, fast=True, summary="Messages",
          responses=_ERRORS),
    Route("POST", "/v1/messages/count_tokens", _count_tokens, summary="Count tokens",
          responses=_ERRORS),
))
