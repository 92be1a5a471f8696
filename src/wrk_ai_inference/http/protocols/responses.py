"""OpenAI's Responses API under /v1/responses, as ``client.responses`` and the OpenAI
Agents SDK call it.

Translation only: ``input`` items (messages, ``function_call``, ``function_call_output``)
and ``instructions`` become the core's conversation; ``tools`` (function tools),
``tool_choice`` and ``text.format`` become the core's options; the worker's events
become output items and the semantic stream events in OpenAI's order. Responses are
kept (``store``, on by default) in the worker's bounded in-memory store, which is what
``previous_response_id``, ``GET`` and ``DELETE`` read. Built-in tools, ``background``,
``reasoning`` and ``include`` are refused by name.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi.responses import Response

from ...errors import InferenceError
from ...logs import new_id
from ...worker import InferenceWorker
from ..responses import JSON
from ..routing import Call, EventStream, Route, Table
from .shared import first_event, json_body

_FIELDS = {"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
           "temperature", "top_p", "max_output_tokens", "text", "stream", "store",
           "previous_response_id", "metadata", "user", "truncation", "background",
           "include", "reasoning", "stream_options"}
_PARTS = {"input_text", "output_text", "text"}


def _invalid(message: str, param: str | None = None) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message, {"param": param} if param else None)


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _PARTS \
                    or not isinstance(part.get("text"), str):
                raise _invalid(f"{where}.content[{k}]: only text parts (input_text, "
                               "output_text) are supported", "input")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(f"{where}.content must be a string or a list of text parts", "input")


def _items(value: Any) -> list[dict[str, Any]]:
    """``input`` as core messages; consecutive function calls join one assistant turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _invalid("input must be a string or a list of items", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message" and isinstance(item, dict) and "role" in item:
            role = item["role"]
            if role not in ("user", "assistant", "system", "developer"):
                raise _invalid(f"{where}.role must be user, assistant, system or developer",
                               "input")
            out.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call" and isinstance(item, dict):
            if not isinstance(item.get("name"), str) or not isinstance(item.get("call_id"),
                                                                       str):
                raise _invalid(f"{where}: a function_call needs call_id and name", "input")
            call = _function(item["call_id"], item["name"], item.get("arguments", "{}"))
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output" and isinstance(item, dict):
            output = item.get("output", "")
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id")),
                        "content": output if isinstance(output, str)
                        else _content(output, where)})
        else:
            raise _invalid(f"{where}: item type {kind!r} is not supported (messages, "
                           "function_call, function_call_output)", "input")
    return out


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _invalid("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _invalid(f"tools[{i}]: built-in tools ({kind!r}) are not served here; "
                           "only function tools", "tools")
        out.append({"type": "function", "function": {
            k: tool[k] for k in ("name", "description", "parameters") if k in tool}})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as the core's response_format."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or set(text) - {"format", "verbosity"}:
        raise _invalid("text may only hold format", "text")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "answer"),
                                                        "schema": fmt.get("schema")}}
    raise _invalid("text.format.type must be text, json_object or json_schema", "text")


class _Request:
    """A Responses request checked and translated."""

    def __init__(self, payload: dict[str, Any], worker: InferenceWorker) -> None:
        unknown = sorted(set(payload) - _FIELDS)
        if unknown:
            raise _invalid(f"fields this worker does not support: {unknown}", unknown[0])
        for name in ("background", "reasoning"):
            if payload.get(name):
                raise _invalid(f"{name} is not supported", name)
        if payload.get("include"):
            raise _invalid("include is not supported", "include")
        if payload.get("truncation") not in (None, "disabled"):
            raise _invalid("truncation must be 'disabled'", "truncation")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise _invalid("model (a string) is required", "model")
        self.model = model
        self.payload = payload
        history: list[dict[str, Any]] = []
        previous = payload.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise _invalid("previous_response_id must be a string",
                               "previous_response_id")
            history = list(worker.stored_response(previous).conversation)
        self.history = history + _items(payload.get("input"))
        instructions = payload.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise _invalid("instructions must be a string", "instructions")
        self.messages = ([{"role": "system", "content": instructions}] if instructions
                         else []) + self.history
        options = {"tools": _tools(payload.get("tools")),
                   "tool_choice": _tool_choice(payload.get("tool_choice")),
                   "parallel_tool_calls": payload.get("parallel_tool_calls"),
                   "temperature": payload.get("temperature"), "top_p": payload.get("top_p"),
                   "max_tokens": payload.get("max_output_tokens"),
                   "response_format": _format(payload.get("text"))}
        self.options = {k: v for k, v in options.items() if v is not None}
        self.store = payload.get("store", True) is not False
        self.id = "resp_" + new_id()
        self.created = int(time.time())

    def response(self, status: str, output: list[dict[str, Any]],
                 usage: dict[str, int] | None, incomplete: bool = False) -> dict[str, Any]:
        p = self.payload
        return {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": status, "model": self.model, "output": output,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": p.get("instructions"), "metadata": p.get("metadata") or {},
            "parallel_tool_calls": bool(p.get("parallel_tool_calls", False)),
            "temperature": p.get("temperature"), "top_p": p.get("top_p"),
            "max_output_tokens": p.get("max_output_tokens"),
            "previous_response_id": p.get("previous_response_id"),
            "tool_choice": p.get("tool_choice", "auto"), "tools": p.get("tools") or [],
            "text": p.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled", "store": self.store, "user": p.get("user"),
            "usage": None if usage is None else {
                "input_tokens": usage.get("promptTokens", 0),
                "input_tokens_details": {"cached_tokens": usage.get("cachedTokens", 0)},
                "output_tokens": usage.get("completionTokens", 0),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.get("totalTokens", 0)}}

    def keep(self, worker: InferenceWorker, response: dict[str, Any],
             text: str, calls: list[dict[str, Any]]) -> None:
        """Store the response and the conversation it ends, when asked to."""
        if not self.store:
            return
        turn: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            turn["tool_calls"] = calls
        worker.store_response(self.id, response, [*self.history, turn])


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [] if status != "completed" else [_text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _function(ident: str, name: str, arguments: str) -> dict[str, Any]:
    """A call as a chat message's ``tool_calls`` entry (how calls are kept)."""
    return {"id": ident, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"),
            "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"]["arguments"] if status == "completed" else "",
            "status": status}


async def _create(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    request = _Request(payload, worker)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream must be true or false", "stream")
    input_data = {"messages": request.messages}
    if not stream:
        answer = await worker.run_inference(request.model, input_data, request.options)
        choice = answer["result"]["choices"][0]
        calls = choice.get("toolCalls", [])
        output = ([_message_item("msg_" + new_id(), choice["text"])]
                  if choice["text"] or not calls else [])
        output += [_call_item(c) for c in calls]
        incomplete = choice["finishReason"] == "length"
        response = request.response("incomplete" if incomplete else "completed", output,
                                     answer["result"]["usage"], incomplete)
        request.keep(worker, response, choice["text"], calls)
        return JSON(response)
    events = worker.stream_inference(request.model, input_data, request.options)
    await first_event(events)
    return EventStream(_stream(worker, request, events))


class _Events:
    """Numbers the stream's events, as OpenAI's ``sequence_number``."""

    def __init__(self) -> None:
        self.number = 0

    def __call__(self, kind: str, body: dict[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self.number, **body})
        self.number += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


async def _stream(worker: InferenceWorker, request: _Request,
                  events: AsyncGenerator[dict[str, Any], None]) -> AsyncGenerator[bytes, None]:
    event = _Events()
    yield event("response.created", {"response": request.response("in_progress", [], None)})
    yield event("response.in_progress", {"response": request.response("in_progress", [],
                                                                      None)})
    output: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    message: str | None = None  # the open message item's id
    call_item: dict[str, Any] = {}  # the function call item being streamed
    reason = "stop"

    def close_message() -> list[bytes]:
        nonlocal message
        if message is None:
            return []
        text, index = "".join(texts), len(output)
        item = _message_item(message, text)
        output.append(item)
        out = [event("response.output_text.done", {"item_id": message, "output_index": index,
                                                   "content_index": 0, "text": text,
                                                   "logprobs": []}),
               event("response.content_part.done", {"item_id": message,
                                                    "output_index": index,
                                                    "content_index": 0,
                                                    "part": _text_part(text)}),
               event("response.output_item.done", {"output_index": index, "item": item})]
        message = None
        return out

    def call_start(tool: dict[str, Any]) -> list[bytes]:
        """A function call item begins (the message before it, if any, ends)."""
        nonlocal call_item
        call_item = _call_item(_function(tool["id"], tool["name"], ""), "in_progress")
        return [*close_message(), event("response.output_item.added", {
            "output_index": len(output), "item": call_item})]

    def call_piece(piece: str) -> list[bytes]:
        return [event("response.function_call_arguments.delta", {
            "item_id": call_item["id"], "output_index": len(output), "delta": piece})]

    def call_end(tool: dict[str, Any]) -> list[bytes]:
        done = _function(tool["id"], tool["name"], tool["arguments"])
        calls.append(done)
        item, index = _call_item(done), len(output)
        output.append(item)
        return [event("response.function_call_arguments.done", {
                    "item_id": item["id"], "output_index": index,
                    "arguments": tool["arguments"]}),
                event("response.output_item.done", {"output_index": index, "item": item})]

    async with contextlib.aclosing(events):
        try:
            async for ev in events:
                kind = ev["type"]  # one choice: this API has no n
                if kind == "delta" and ev["text"]:
                    if message is None:
                        message = "msg_" + new_id()
                        index = len(output)
                        yield event("response.output_item.added", {
                            "output_index": index,
                            "item": _message_item(message, "", "in_progress")})
                        yield event("response.content_part.added", {
                            "item_id": message, "output_index": index, "content_index": 0,
                            "part": _text_part("")})
                    texts.append(ev["text"])
                    yield event("response.output_text.delta", {
                        "item_id": message, "output_index": len(output), "content_index": 0,
                        "delta": ev["text"], "logprobs": []})
                elif kind in ("toolCallStart", "toolCallArguments", "toolCall"):
                    tool = ev["call"]
                    out = (call_start(tool) if kind == "toolCallStart" else
                           call_piece(tool["arguments"]) if kind == "toolCallArguments"
                           else call_end(tool))
                    for chunk in out:
                        yield chunk
                elif kind == "finish":
                    reason = ev["finishReason"]
                elif kind == "end":
                    for chunk in close_message():
                        yield chunk
                    incomplete = reason == "length"
                    response = request.response("incomplete" if incomplete else "completed",
                                                output, ev["usage"], incomplete)
                    request.keep(worker, response, "".join(texts), calls)
                    yield event("response.incomplete" if incomplete else "response.completed",
                                {"response": response})
        except InferenceError as exc:
            yield event("error", {"code": exc.code, "message": exc.message,
                                  "param": exc.details.get("param")})


async def _get(worker: InferenceWorker, call: Call) -> Response:
    return JSON(worker.stored_response(call.params["response_id"]).response)


async def _delete(worker: InferenceWorker, call: Call) -> Response:
    response_id = call.params["response_id"]
    if not worker.delete_response(response_id):
        worker.stored_response(response_id)  # raises: not found
    return JSON({"id": response_id, "object": "response.deleted", "deleted": True})


_ERRORS = (400, 401, 404, 409, 413, 429, 500, 503, 504)

TABLE = Table("openai", "OpenAI Responses API", (
    Route("POST", "/v1/responses", _create, fast=True, summary="Create a response",
          responses=_ERRORS),
    Route("GET", "/v1/responses/{response_id}", _get, summary="A stored response",
          responses=(401, 404)),
    Route("DELETE", "/v1/responses/{response_id}", _delete,
          summary="Delete a stored response", responses=(401, 404)),
))
