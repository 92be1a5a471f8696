"""Tool-call formats per template family and the stream that tells calls from text,
without a model: what each family's models write, cut into arbitrary pieces."""

from __future__ import annotations

import json

import pytest

from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.tasks.chat.calls import CallStream
from wrk_ai_inference.tasks.chat.formats import Call, Format, family
from wrk_ai_inference.tasks.chat.tools import toolset

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
    for n in ("get_weather", "get_time")]
WEATHER = Call("get_weather", json.dumps({"city": "Paris"}))

#: (a template's telling part, the family, what its models write for one call)
FAMILIES = [
    ("{% if tools %}<tools>{% endif %}<tool_call>", "hermes",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    ("[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]", "mistral",
     '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    ("<|start_header_id|>{{ tools }}<|python_tag|>", "llama3",
     '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    ("<|im_start|>{{ message['content'] }}", "generic",
     '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'),
]


def _stream(fmt: Format, text: str, size: int, whole: bool = False) -> list[tuple[str, object]]:
    tools = toolset(TOOLS, "auto", None)
    assert tools is not None
    stream = CallStream(fmt, tools, whole)
    items = []
    for at in range(0, len(text), size):
        items += stream.feed(text[at:at + size])
    items += stream.close()
    return items


@pytest.mark.parametrize(("template", "name", "written"), FAMILIES)
def test_each_family_is_told_by_its_template_and_its_calls_parsed(
        template: str, name: str, written: str) -> None:
    fmt = family(template)
    assert fmt.name == name
    assert fmt.parse(written, {"get_weather", "get_time"}) == ("", [WEATHER])
    for size in (1, 3, 7, len(written)):  # however the tokens cut it
        assert _stream(fmt, written, size, whole=name == "generic") == [("call", WEATHER)]


@pytest.mark.parametrize("written", [
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '```\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}\n```',
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '{{"name": "get_weather", "arguments": {"city": "Paris"}}}',
])
def test_a_call_in_a_fence_or_bare_is_still_a_call(written: str) -> None:
    for size in (1, 4, len(written)):
        assert _stream(family("<tool_call>"), written, size) == [("call", WEATHER)]


def test_text_passes_and_what_is_not_a_call_stays_text() -> None:
    fmt = family("<tool_call>")
    text = "Sure. Here is code:\n```python\nprint(1)\n```\nDone."
    for size in (1, 5, len(text)):
        items = _stream(fmt, text, size)
        assert all(kind == "text" for kind, _ in items)
        assert "".join(str(v) for _, v in items) == text
    # a call to a tool the request does not offer is text
    other = '<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>'
    assert "".join(str(v) for _, v in _stream(fmt, other, 3)) == other


def test_text_then_a_call_in_one_answer() -> None:
    written = ('Let me check.\n<tool_call>\n{"name": "get_time", "arguments": '
               '{"city": "Oslo"}}\n</tool_call>')
    items = _stream(family("<tool_call>"), written, 2)
    assert "".join(str(v) for k, v in items if k == "text").strip() == "Let me check."
    assert [v for k, v in items if k == "call"] == [Call("get_time", '{"city": "Oslo"}')]


@pytest.mark.parametrize(("tools", "choice", "word"), [
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "nope"),
    (None, "required", "no tools"),
    (TOOLS, "sometimes", "tool_choice"),
    ([{"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}],
     "auto", "tool 'x'"),
])
def test_bad_choices_and_tools_are_named(tools: object, choice: object, word: str) -> None:
    with pytest.raises(InferenceError) as caught:
        toolset(tools, choice, None)
    assert word in caught.value.message
