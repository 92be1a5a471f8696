"""GBNF grammars from JSON schemas: a response format's, or a toolset's calls.

llama-cpp-python's schema converter does the translation; this module bounds what
goes in and what comes out. Built off the event loop (a wide schema takes seconds)
and cached by the canonical text of what it was built from, so the same toolset or
schema again costs nothing.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from ...errors import InferenceError, first_line
from .tools import toolset

#: length and item bounds the grammar spells out; above them it leaves the count open
#: (llama.cpp refuses repetitions of more than 2000 rules, and each bound unrolls into
#: one rule per place), the answer's token budget then bounds it
MAX_SPELLED_REPEAT = 256
MAX_GRAMMAR_BYTES = 1 << 20


def _invalid(message: str, param: str) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message, {"param": param})


def _loosen(schema: Any, where: str) -> Any:
    """The schema with counts too large to spell out left open (a copy)."""
    if isinstance(schema, list):
        return [_loosen(s, where) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("maxLength", "maxItems", "maxProperties") and isinstance(value, int) \
                and value > MAX_SPELLED_REPEAT:
            continue
        if key in ("minLength", "minItems", "minProperties") and isinstance(value, int) \
                and value > MAX_SPELLED_REPEAT:
            raise _invalid(f"{where}: {key} {value} is over the {MAX_SPELLED_REPEAT} "
                           "a grammar can spell out", "tools")
        out[key] = value if key in ("enum", "const", "default", "examples") \
            else _loosen(value, where)
    return out


def _converter() -> Any:
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={"name": 0, "arguments": 1, "parameters": 1}, allow_fetch=False,
        dotall=False, raw_pattern=False)


def _visit(converter: Any, schema: Any, name: str, where: str, param: str,
           wrap: Any = None) -> str:
    """The rule for ``schema`` (its ``$ref``s resolved within it, under a base of its own);
    ``wrap`` puts the resolved schema inside another before it is visited."""
    try:
        resolved = converter.resolve_refs(copy.deepcopy(schema), name)
        rule: str = converter.visit(wrap(resolved) if wrap else resolved, name)
    except RecursionError:
        raise _invalid(f"{where} nests too deeply to become a grammar", param) from None
    except Exception as exc:  # the converter raises plain exceptions on what it lacks
        raise _invalid(f"{where} cannot be turned into a grammar: {first_line(exc)}",
                       param) from None
    return rule


def _bounded(text: str, where: str, param: str) -> str:
    if len(text) > MAX_GRAMMAR_BYTES:
        raise _invalid(f"{where} makes a grammar of {len(text)} bytes; at most "
                       f"{MAX_GRAMMAR_BYTES} are accepted", param)
    return text


@functools.lru_cache(maxsize=32)
def schema_grammar(constraint: str) -> str:
    """GBNF for a response format: "json" (any JSON) or a schema's canonical text."""
    from llama_cpp.llama_grammar import JSON_GBNF

    if constraint == "json":
        return str(JSON_GBNF)
    where = "response_format.json_schema"
    converter = _converter()
    _visit(converter, _loosen(json.loads(constraint), where), "", where, "response_format")
    return _bounded(converter.format_grammar(), where, "response_format")


def call_schema(name: str, parameters: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    """One call to tool ``name`` as a JSON object: its name, then its arguments."""
    return {"type": "object",
            "properties": {"name": {"const": name}, arguments_key: parameters},
            "required": ["name", arguments_key]}


@functools.lru_cache(maxsize=32)
def calls_grammar(tools_key: str, offered: tuple[str, ...], arguments_key: str, root: str,
                  answer: str | None) -> str:
    """GBNF whose ``root`` (the format's rule) is built from rules named here: ``call``
    (one call to any of the ``offered`` tools) and, where asked, ``answer`` (a text
    answer's schema, or "json", as JSON text). ``tools_key`` is the toolset's canonical
    JSON (``Toolset.key``, made once when the request was checked): one cache entry per
    distinct toolset, choice and format, and nothing serialised again on a hit."""
    parsed = toolset(json.loads(tools_key), "auto", None)
    assert parsed is not None
    parameters = {t.name: t.parameters for t in parsed.tools}
    converter = _converter()
    alternatives: list[str] = []
    for name in offered:
        where = f"tool '{name}'"
        alternatives.append(_visit(
            converter, _loosen(parameters[name], where), f"call-{len(alternatives)}", where,
            "tools", lambda resolved, name=name: call_schema(name, resolved, arguments_key)))
    converter._add_rule("call", " | ".join(alternatives))
    if answer is not None:  # "json": any JSON object, as response_format json_object
        where = "response_format.json_schema"
        value = json.loads(answer)
        schema = {"type": "object"} if value == "json" else _loosen(value, where)
        converter._add_rule("answer", _visit(converter, schema, "answer-value", where,
                                             "response_format"))
    converter._add_rule("root", root)
    return _bounded(converter.format_grammar(), "the tools", "tools")
