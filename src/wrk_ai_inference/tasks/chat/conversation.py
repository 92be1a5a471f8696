"""The one conversation every language-model protocol translates into.

Its messages are OpenAI's chat messages, the shape chat templates are written for:
``system``, ``user``, ``assistant`` (text, and ``tool_calls`` it made) and ``tool``
(a call's result, with the ``tool_call_id`` it answers). The Anthropic and Responses
routes, the seed API and RPC build this shape and nothing else reads theirs. Checks
are linear in the input and run on the event loop before a slot is taken.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import InferenceError

MAX_PARTS = 256  # text parts one message may have
MAX_CALLS = 64  # tool calls one assistant message may carry

_ROLES = {"system", "user", "assistant", "developer", "tool"}
_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id"}


def _invalid(message: str) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message, {"param": "messages"})


def _content(message: dict[str, Any], index: int, optional: bool) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and optional:
        return ""
    if isinstance(content, list):  # OpenAI's content parts: only text ones are served
        if len(content) > MAX_PARTS:
            raise _invalid(f"messages[{index}].content has {len(content)} parts; at most "
                           f"{MAX_PARTS} are accepted")
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise _invalid(f"messages[{index}].content: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(f"messages[{index}].content must be a string or a list of text parts")


def arguments_object(arguments: Any) -> Any:
    """A call's arguments as templates want them: an object (they write it with
    ``tojson``); text that is not JSON stays text."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _calls(value: Any, index: int) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_CALLS:
        raise _invalid(f"messages[{index}].tool_calls must be a list of at most {MAX_CALLS} "
                       "calls")
    calls = []
    for k, call in enumerate(value):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                or not isinstance(fn.get("arguments", "{}"), str | dict):
            raise _invalid(f"messages[{index}].tool_calls[{k}] must be {{\"id\", \"type\": "
                           "\"function\", \"function\": {name, arguments}}")
        ident = call.get("id")
        calls.append({"id": ident if isinstance(ident, str) else f"call_{index}_{k}",
                      "type": "function",
                      "function": {"name": fn["name"],
                                   "arguments": arguments_object(fn.get("arguments", "{}"))}})
    return calls


def messages(value: Any, most: int) -> list[dict[str, Any]]:
    """The conversation checked and in the core's shape; at most ``most`` messages
    (checked before any is looked at: each takes at least one token)."""
    if not isinstance(value, list) or not value:
        raise _invalid("messages must be a non-empty list of {role, content}")
    if len(value) > most:
        raise _invalid(f"{len(value)} messages cannot fit: the model's context holds "
                       f"{most} tokens, and every message takes at least one")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}] must be an object {{role, content}}")
        unknown = set(message) - _FIELDS
        if unknown:
            raise _invalid(f"messages[{i}] has fields this worker does not support: "
                           f"{sorted(unknown)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _invalid(f"messages[{i}].role must be one of {sorted(_ROLES)}")
        calls = message.get("tool_calls")
        if calls is not None and role != "assistant":
            raise _invalid(f"messages[{i}]: only assistant messages carry tool_calls")
        entry: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content(message, i, optional=calls is not None or role == "tool")}
        if calls:
            entry["tool_calls"] = _calls(calls, i)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise _invalid(f"messages[{i}]: a tool message needs the tool_call_id it "
                               "answers")
            entry["tool_call_id"] = call_id
            name = message.get("name") or _called(out, call_id)
            if name:
                entry["name"] = name
        out.append(entry)
    return out


def _called(history: list[dict[str, Any]], call_id: str) -> str | None:
    """The function a tool result answers, found by its call id (templates that name
    the tool in a result turn want it)."""
    for message in reversed(history):
        for call in message.get("tool_calls", ()):
            if call["id"] == call_id:
                name: str = call["function"]["name"]
                return name
    return None


def text_size(conversation: list[dict[str, Any]]) -> int:
    """Characters the conversation's text and calls take, before rendering: what the
    context bound is checked against."""
    size = 0
    for message in conversation:
        size += len(message["content"])
        for call in message.get("tool_calls", ()):
            args = call["function"]["arguments"]
            size += len(call["function"]["name"]) + (
                len(args) if isinstance(args, str) else len(json.dumps(args)))
    return size
