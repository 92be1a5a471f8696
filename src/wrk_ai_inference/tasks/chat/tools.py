"""Tools a request offers the model, and which of them it must call.

Every protocol hands the core the same shapes, OpenAI's: ``tools`` as a list of
``{"type": "function", "function": {"name", "description", "parameters"}}`` and
``tool_choice`` as ``"none"``, ``"auto"``, ``"required"`` or ``{"type": "function",
"function": {"name"}}``. Schemas come from callers and become grammars, so their size
and depth are bounded here, on the event loop, before anything is built from them: what
exceeds a bound is a 400 that names the tool and the bound.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ...errors import InferenceError

MAX_TOOLS = 128
MAX_TOOLS_BYTES = 256 * 1024  # the toolset as canonical JSON
MAX_SCHEMA_DEPTH = 12  # nested schemas (properties, items, anyOf...) in one tool
MAX_SCHEMA_NODES = 4000  # schema objects over the whole toolset
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CHOICES = ("none", "auto", "required")
#: schema keywords that hold schemas (their values are walked for depth and size)
_NESTING = ("properties", "items", "anyOf", "oneOf", "allOf", "additionalProperties",
            "prefixItems", "$defs", "definitions", "not")


def _invalid(message: str, param: str = "tools") -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message, {"param": param})


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        """The tool as chat templates expect it (Hugging Face's convention)."""
        return {"type": "function", "function": {"name": self.name,
                                                 "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class Toolset:
    """The tools of one request and what it asks of them; ``key`` names it for the
    grammar cache (the same toolset again reuses its grammar)."""

    tools: tuple[Tool, ...]
    choice: str  # "none", "auto", "required" or "named"
    named: str | None  # the function a named choice forces
    parallel: bool
    key: str

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools the model may call under the choice."""
        if self.choice == "none":
            return ()
        if self.named is not None:
            return tuple(t for t in self.tools if t.name == self.named)
        return self.tools

    @property
    def forced(self) -> bool:
        """The answer must be a call (the whole output is constrained)."""
        return self.choice in ("required", "named")


def _walk(schema: Any, tool: str, depth: int, count: list[int]) -> None:
    """Check one schema's depth and node count; self-references (``$ref``) are refused by
    the grammar builder, which names them, so they are not followed here."""
    if depth > MAX_SCHEMA_DEPTH:
        raise _invalid(f"tool '{tool}': its parameters nest schemas more than "
                       f"{MAX_SCHEMA_DEPTH} deep")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise _invalid(f"tool '{tool}': its parameters hold {type(schema).__name__} where "
                       "a JSON Schema (an object) belongs")
    count[0] += 1
    if count[0] > MAX_SCHEMA_NODES:
        raise _invalid(f"the tools' parameters hold more than {MAX_SCHEMA_NODES} schemas "
                       f"(at tool '{tool}')")
    for key in _NESTING:
        value = schema.get(key)
        if value is None:
            continue
        if key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise _invalid(f"tool '{tool}': '{key}' must be an object of schemas")
            children = list(value.values())
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            if not isinstance(value, list):
                raise _invalid(f"tool '{tool}': '{key}' must be a list of schemas")
            children = value
        else:
            children = [value]
        for child in children:
            _walk(child, tool, depth + 1, count)


def _tool(value: Any, index: int, count: list[int]) -> Tool:
    if not isinstance(value, dict) or value.get("type") != "function" \
            or not isinstance(value.get("function"), dict):
        raise _invalid(f"tools[{index}] must be {{\"type\": \"function\", \"function\": "
                       "{name, description, parameters}} (only function tools are served)")
    fn = value["function"]
    unknown = set(fn) - {"name", "description", "parameters", "strict"}
    if unknown:
        raise _invalid(f"tools[{index}].function has fields this worker does not "
                       f"support: {sorted(unknown)}")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _invalid(f"tools[{index}].function.name must be 1 to 64 letters, digits, "
                       "'_', '.', ':' or '-'")
    description = fn.get("description", "")
    if not isinstance(description, str):
        raise _invalid(f"tool '{name}': description must be a string")
    parameters = fn.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise _invalid(f"tool '{name}': parameters must be a JSON Schema object")
    if parameters.get("type", "object") != "object":
        raise _invalid(f"tool '{name}': parameters must describe an object "
                       "(\"type\": \"object\"): a call's arguments are one")
    _walk(parameters, name, 1, count)
    return Tool(name, description, parameters)


def toolset(tools: Any, tool_choice: Any, parallel: Any) -> Toolset | None:
    """The request's tools checked, or None when it offers none (``tool_choice`` alone
    is then refused, except ``none``/``auto``, which ask for nothing)."""
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("parallel_tool_calls must be true or false", "parallel_tool_calls")
    choice, named = _choice(tool_choice)
    if tools is None or tools == []:
        if choice in ("required", "named"):
            raise _invalid("tool_choice asks for a tool call, but the request has no tools",
                           "tool_choice")
        return None
    if not isinstance(tools, list):
        raise _invalid("tools must be a list of function tools")
    if len(tools) > MAX_TOOLS:
        raise _invalid(f"{len(tools)} tools: at most {MAX_TOOLS} are accepted")
    key = json.dumps(tools, sort_keys=True, ensure_ascii=False)
    if len(key) > MAX_TOOLS_BYTES:
        raise _invalid(f"the tools take {len(key)} characters as JSON; at most "
                       f"{MAX_TOOLS_BYTES} are accepted")
    count = [0]
    parsed = tuple(_tool(t, i, count) for i, t in enumerate(tools))
    names = [t.name for t in parsed]
    if len(set(names)) != len(names):
        raise _invalid("two tools have the same name")
    if named is not None and named not in names:
        raise _invalid(f"tool_choice names '{named}', which is not among the tools",
                       "tool_choice")
    # off unless asked for, as llama-server has it: small models asked for several calls
    # tend to repeat one until the token budget runs out
    return Toolset(parsed, choice, named, bool(parallel), key)


def _choice(value: Any) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in _CHOICES:
            raise _invalid(f"tool_choice must be one of {list(_CHOICES)} or a named "
                           "function", "tool_choice")
        return value, None
    if isinstance(value, dict) and value.get("type") == "function" \
            and isinstance(value.get("function"), dict) \
            and isinstance(value["function"].get("name"), str):
        return "named", value["function"]["name"]
    raise _invalid('tool_choice must be "none", "auto", "required" or {"type": '
                   '"function", "function": {"name": ...}}', "tool_choice")
