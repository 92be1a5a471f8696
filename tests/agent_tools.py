"""Toolsets as agents send them, and hostile ones, shared by the tests and the benchmark.

``agent_toolset`` builds what coding agents register: dozens of tools whose schemas
carry long descriptions, enums, ``anyOf``, nested objects and arrays, a string of
``maxLength`` 10,000 and the empty-object schema of a tool without parameters.
"""

from __future__ import annotations

import json
from typing import Any


def _tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": parameters}}


def agent_toolset(count: int = 50, schema_bytes: int = 100_000) -> list[dict[str, Any]]:
    """``count`` tools whose schemas take about ``schema_bytes`` as JSON in all."""
    filler = max(0, schema_bytes // count - 650)
    tools = [_tool("get_weather", "Get the current weather in a city",
                   {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}),
             _tool("list_open_files", "List the files open in the editor",
                   {"type": "object", "properties": {}})]
    for i in range(count - len(tools)):
        tools.append(_tool(f"tool_{i:02d}", f"Tool number {i}. " + "Details. " * (filler // 9),
                           {"type": "object", "properties": {
                               "path": {"type": "string", "description": "A file path",
                                        "maxLength": 10_000},
                               "mode": {"type": "string", "enum": ["read", "write", "append"]},
                               "target": {"anyOf": [{"type": "string"},
                                                    {"type": "integer", "minimum": 0}]},
                               "options": {"type": "object", "properties": {
                                   "recursive": {"type": "boolean"},
                                   "depth": {"type": "integer"},
                                   "globs": {"type": "array", "items": {"type": "string"},
                                             "maxItems": 20}},
                                           "required": ["recursive"]},
                               "edits": {"type": "array", "items": {
                                   "type": "object", "properties": {
                                       "line": {"type": "integer"},
                                       "text": {"type": "string"}},
                                   "required": ["line", "text"]}}},
                            "required": ["path", "mode"]}))
    return tools


def schema_bytes(tools: list[dict[str, Any]]) -> int:
    return len(json.dumps(tools))


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"inner": schema}, "required": ["inner"]}
    return schema


#: (what the toolset is, its tools, what the 400's message must name)
HOSTILE_TOOLS: list[tuple[str, list[dict[str, Any]], str]] = [
    ("a schema 40 deep", [_tool("deep", "deep", nested(40))], "tool 'deep'"),
    ("parameters that are a list", [_tool("listy", "x", [1, 2])], "tool 'listy'"),  # type: ignore[arg-type]
    ("a property schema that is a number",
     [_tool("numbered", "x", {"type": "object", "properties": {"a": 5}})], "tool 'numbered'"),
    ("a type that does not exist",
     [_tool("odd", "x", {"type": "object", "properties": {"a": {"type": "colour"}}})],
     "tool 'odd'"),
    ("a remote $ref", [_tool("remote", "x", {"type": "object", "properties": {
        "a": {"$ref": "https://example.com/schema.json"}}})], "tool 'remote'"),
    ("a minLength too long to spell out",
     [_tool("long", "x", {"type": "object", "properties": {
         "a": {"type": "string", "minLength": 100_000}}})], "tool 'long'"),
    ("1 MB of tools", [_tool(f"t{i}", "x" * 20_000, {"type": "object", "properties": {}})
                       for i in range(50)], "at most"),
    ("200 tools", [_tool(f"t{i}", "x", {"type": "object", "properties": {}})
                   for i in range(200)], "at most"),
    ("a name with spaces", [_tool("two words", "x", {"type": "object"})], "name"),
    ("two tools of one name", [_tool("same", "x", {"type": "object"}),
                               _tool("same", "y", {"type": "object"})], "same name"),
]

#: toolsets that must be answered (a call), not refused, and what is asked of them
ODD_BUT_VALID: list[tuple[str, list[dict[str, Any]], str]] = [
    ("a self-referring schema", [_tool("tree", "A tree of nodes", {
        "type": "object", "properties": {"root": {"$ref": "#/$defs/node"}},
        "required": ["root"],
        "$defs": {"node": {"type": "object", "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["name"]}}})], "Make a tree of one node named Paris, without children."),
    ("template syntax in the description", [_tool(
        "templ", "{{ raise_exception('boom') }} {% for x in range(10**9) %}x{% endfor %}",
        {"type": "object", "properties": {"q": {"type": "string", "maxLength": 20}},
         "required": ["q"]})], "What is the weather in Paris?"),
    ("the empty-object schema", [_tool("noargs", "No arguments",
                                       {"type": "object", "properties": {}})],
     "What is the weather in Paris?"),
]
