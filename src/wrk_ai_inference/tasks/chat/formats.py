"""How a family of chat templates writes tool calls: the grammar that makes the model
write one, the trigger that starts one in free text, and the parser that reads them.

The family is told by the template, not by the model's name: a template that writes
``<tool_call>`` is Hermes's (Qwen 2.5 and 3, Hermes, many fine-tunes), ``[TOOL_CALLS]``
is Mistral's, ``<|python_tag|>`` or Llama 3's headers with tools is Llama 3.x's JSON
calls. A template that does not mention tools gets the generic format: the tools are
described in a system message and the model answers with JSON, ``{"tool_calls":
[...]}`` or ``{"response": "..."}`` (as llama-server's generic handler does), under a
grammar for the whole answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .tools import Tool, Toolset

_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?")


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # JSON text, as OpenAI carries it


def _call(value: Any, names: set[str]) -> Call | None:
    """``{"name", "arguments" | "parameters"}`` naming one of ``names``, else None."""
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return Call(value["name"], json.dumps(args, ensure_ascii=False))


def calls_in(value: Any, names: set[str]) -> list[Call] | None:
    """The calls a JSON value holds: one call, a list of them, or the generic format's
    ``{"tool_calls": [...]}`` / ``{"tool_call": {...}}``; None when it is not calls."""
    if isinstance(value, dict) and "tool_calls" in value:
        value = value["tool_calls"]
    elif isinstance(value, dict) and "tool_call" in value:
        value = [value["tool_call"]]
    items = value if isinstance(value, list) else [value]
    calls = [_call(item, names) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _json_at(text: str, start: int) -> tuple[Any, int] | None:
    """The JSON value that begins at ``start`` (after blanks) and where it ends."""
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    try:
        return _DECODER.raw_decode(text, start)
    except ValueError:
        return None


def fenced_calls(block: str, names: set[str]) -> list[Call] | None:
    """A code fence whose content is a call (what small models write instead of their
    tags): ```` ```json\\n{"name": ..., "arguments": ...}\\n``` ````."""
    opening = _FENCE.match(block)
    if opening is None:
        return None
    body = block[opening.end():]
    if body.endswith("```"):
        body = body[:-3]
    found = _json_at(body, 0)
    if found is None or body[found[1]:].strip():
        return None
    return calls_in(found[0], names)


class Format:
    """A family. ``trigger``: the text that starts a call in free text (None: calls are
    told by the answer's first character); ``arguments_key``: the arguments' name in a
    call object."""

    name = "generic"
    trigger: str | None = None
    end_tag: str | None = None
    arguments_key = "arguments"
    #: the whole answer is JSON: it is constrained whole and read whole
    whole_json = False

    def conversation(self, messages: list[dict[str, Any]], tools: Toolset
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """(the messages, the tools) as the template is given them: here the template
        renders the tools and the tool turns itself."""
        return messages, [t.as_openai() for t in tools.offered]

    def answer(self, tools: Toolset, constraint: str | None) -> Any:
        """What a text answer must be under the grammar: None (free text), "json" or a
        schema; a required call leaves no text answer."""
        if constraint is None or tools.forced:
            return None
        return "json" if constraint == "json" else json.loads(constraint)

    def plan(self, tools: Toolset, constraint: str | None) -> tuple[Any, str | None]:
        """(``answer``, how the calls' grammar applies: "whole" (the whole answer), "lazy"
        (from the trigger on) or None (calls told by the answer's start are parsed, not
        constrained)). The grammar is built from both; the shaper streams a call's
        arguments where the grammar writes them."""
        answer = self.answer(tools, constraint)
        if tools.forced or answer is not None:
            return answer, "whole"
        return answer, "lazy" if self.trigger is not None else None

    def root(self, toolset: Toolset, answer: bool) -> str:
        """The grammar's root rule over ``call`` (and ``answer`` when the answer may be
        text in a response format instead of calls)."""
        calls = self._calls(toolset.parallel)
        return f"{calls} | answer" if answer else calls

    def _calls(self, parallel: bool) -> str:
        raise NotImplementedError

    def parse(self, text: str, names: set[str]) -> tuple[str, list[Call]]:
        """(text that is not a call, the calls) of a whole answer."""
        raise NotImplementedError

    @staticmethod
    def bare(text: str, names: set[str]) -> list[Call]:
        """Calls written as plain JSON objects (one after another), without the format's
        tags, as small models often do; none unless the whole text is calls."""
        body = text.strip()
        if body.startswith("<|python_tag|>"):
            body = body[len("<|python_tag|>"):]
        if body.startswith("{{") and body.endswith("}}"):
            body = body[1:-1]  # doubled braces, as the template's own examples are written
        calls: list[Call] = []
        at = 0
        while True:
            found = _json_at(body, at)
            parsed = calls_in(found[0], names) if found else None
            if found is None or parsed is None:
                break
            calls += parsed
            at = found[1]
            while at < len(body) and body[at] in " \t\r\n;":
                at += 1
        return calls if calls and not body[at:].strip() else []


class Hermes(Format):
    name = "hermes"
    trigger = "<tool_call>"
    end_tag = "</tool_call>"

    def _calls(self, parallel: bool) -> str:
        one = '"<tool_call>\\n" space call "\\n"? "</tool_call>"'
        return f'{one} ("\\n" {one})*' if parallel else one

    def parse(self, text: str, names: set[str]) -> tuple[str, list[Call]]:
        calls: list[Call] = []
        rest: list[str] = []
        at = 0
        while True:
            start = text.find("<tool_call>", at)
            if start < 0 and not calls:
                bare = self.bare(text, names)
                return ("", bare) if bare else (text, [])
            if start < 0:
                rest.append(text[at:])
                break
            rest.append(text[at:start])
            found = _json_at(text, start + len("<tool_call>"))
            parsed = calls_in(found[0], names) if found else None
            if found is None or parsed is None:
                rest.append(text[start:])
                break
            calls += parsed
            at = found[1]
            closing = text.find("</tool_call>", at)
            if closing >= 0 and not text[at:closing].strip():
                at = closing + len("</tool_call>")
        return "".join(rest).strip() if calls else "".join(rest), calls


class Mistral(Format):
    name = "mistral"
    trigger = "[TOOL_CALLS]"

    def _calls(self, parallel: bool) -> str:
        more = ' ("," space call)*' if parallel else ""
        return f'"[TOOL_CALLS]" space "[" space call{more} "]" space'

    def parse(self, text: str, names: set[str]) -> tuple[str, list[Call]]:
        start = text.find("[TOOL_CALLS]")
        if start < 0:
            bare = self.bare(text, names)
            return ("", bare) if bare else (text, [])
        found = _json_at(text, start + len("[TOOL_CALLS]"))
        parsed = calls_in(found[0], names) if found else None
        if found is None or parsed is None:
            return text, []
        return (text[:start] + text[found[1]:]).strip(), parsed


class Llama3(Format):
    name = "llama3"
    arguments_key = "parameters"

    def _calls(self, parallel: bool) -> str:
        return 'call (";" space call)*' if parallel else "call"

    def parse(self, text: str, names: set[str]) -> tuple[str, list[Call]]:
        calls = self.bare(text, names)
        return ("", calls) if calls else (text, [])


class Generic(Format):
    """For templates that know nothing of tools: the whole answer is JSON."""

    whole_json = True

    def conversation(self, messages: list[dict[str, Any]], tools: Toolset
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The tools described in the system message, past calls and results written as
        the JSON the model is asked to answer with; the template sees no tools."""
        intro = self.system_text(tools.offered, tools.forced)
        out: list[dict[str, Any]] = []
        for message in messages:
            if message.get("tool_calls"):
                calls = [{"name": c["function"]["name"],
                          "arguments": c["function"]["arguments"]}
                         for c in message["tool_calls"]]
                out.append({"role": "assistant",
                            "content": json.dumps({"tool_calls": calls})})
            elif message["role"] == "tool":
                out.append({"role": "user", "content": json.dumps({"tool_response": {
                    "name": message.get("name", ""), "content": message["content"]}})})
            elif message["role"] == "assistant" and message["content"]:
                out.append({"role": "assistant",
                            "content": json.dumps({"response": message["content"]})})
            else:
                out.append({"role": message["role"], "content": message["content"]})
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + intro}
        else:
            out.insert(0, {"role": "system", "content": intro})
        return out, None

    def answer(self, tools: Toolset, constraint: str | None) -> Any:
        """Unless a call is required, the answer is ``{"response": <this>}``: text, or
        the response format's value."""
        if tools.forced:
            return None
        return super().answer(tools, constraint) or {"type": "string"}

    def _calls(self, parallel: bool) -> str:
        more = ' ("," space call)*' if parallel else ""
        return ('"{" space "\\"tool_calls\\"" space ":" space "[" space '
                f'call{more} "]" space "}}" space')

    def root(self, toolset: Toolset, answer: bool) -> str:
        """Calls, or (unless a call is required) the answer as ``{"response": answer}``."""
        calls = self._calls(toolset.parallel)
        if toolset.forced:
            return calls
        return f'{calls} | "{{" space "\\"response\\"" space ":" space answer "}}" space'

    def parse(self, text: str, names: set[str]) -> tuple[str, list[Call]]:
        found = _json_at(text, 0)
        if found is None:
            return text, []
        value = found[0]
        calls = calls_in(value, names)
        if calls:
            return "", calls
        if isinstance(value, dict) and set(value) == {"response"}:
            answer = value["response"]
            return answer if isinstance(answer, str) else json.dumps(answer), []
        return text, []

    @staticmethod
    def system_text(tools: tuple[Tool, ...], forced: bool) -> str:
        """What the model is told about the tools, in a system message."""
        listed = json.dumps([t.as_openai()["function"] for t in tools], ensure_ascii=False)
        how = ('Answer with JSON only: {"tool_calls": [{"name": <tool name>, "arguments": '
               '<arguments object>}]}.')
        if not forced:
            how += (' To answer without a tool, answer with JSON only: {"response": '
                    '<your answer>}.')
        return f"You can call these tools:\n{listed}\n{how}"


def family(template: str) -> Format:
    """The format a chat template writes tool calls in."""
    if "<tool_call>" in template:
        return Hermes()
    if "[TOOL_CALLS]" in template:
        return Mistral()
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template
                                        and "tools" in template):
        return Llama3()
    return Generic()
