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


def _streamed(fmt: Format, text: str, size: int, whole: bool) -> list[tuple[str, object]]:
    """A grammar-written answer through the stream, the pieces of each call's arguments
    joined (how they were cut depends on the piece size)."""
    tools = toolset(TOOLS, "auto", None)
    assert tools is not None
    stream = CallStream(fmt, tools, whole, constrained=True)
    items: list[tuple[str, object]] = []
    for at in range(0, len(text), size):
        items += stream.feed(text[at:at + size])
    items += stream.close()
    joined: list[tuple[str, object]] = []
    for kind, value in items:
        if kind == "arguments" and joined and joined[-1][0] == "arguments":
            joined[-1] = ("arguments", str(joined[-1][1]) + str(value))
        else:
            joined.append((kind, value))
    return joined


@pytest.mark.parametrize(("template", "name", "written"), FAMILIES)
def test_a_grammar_written_call_streams_its_arguments_as_they_are_written(
        template: str, name: str, written: str) -> None:
    fmt = family(template)
    lazy = fmt.trigger is not None
    for size in (1, 3, 7, len(written)):
        for whole in {True, not lazy}:  # forced: the whole answer; auto: from the trigger
            assert _streamed(fmt, written, size, whole) == [
                ("open", "get_weather"), ("arguments", '{"city": "Paris"}'),
                ("call", WEATHER)], (size, whole)
    # the call is sent the moment its arguments close, before the answer ends
    tools = toolset(TOOLS, "auto", None)
    assert tools is not None
    stream = CallStream(fmt, tools, True, constrained=True)
    cut = written.index("}") + 2
    assert ("call", WEATHER) in stream.feed(written[:cut])


def test_calls_in_a_row_stream_one_after_the_other_and_a_cut_call_ends_as_written() -> None:
    fmt = family("<tool_call>")
    code = '{"city": "Ni{ce} \\"}\\" [x"}'  # braces and quotes inside a string
    written = ('I will look.\n<tool_call>\n{"name": "get_weather", "arguments": '
               f'{code}}}\n</tool_call>\n<tool_call>\n{{"name": "get_time", '
               '"arguments": {"city": "Oslo"}}\n</tool_call>')
    for size in (1, 2, 5, len(written)):
        items = _streamed(fmt, written, size, whole=False)
        assert [k for k, _ in items if k != "text"] == [
            "open", "arguments", "call", "open", "arguments", "call"], size
        assert "".join(str(v) for k, v in items if k == "text").strip() == "I will look."
        assert [v for k, v in items if k == "call"] == [
            Call("get_weather", code), Call("get_time", '{"city": "Oslo"}')]
        assert json.loads(code) == {"city": 'Ni{ce} "}" [x'}
    # the answer ended inside the arguments (its length): the call ends as far as written
    cut = _streamed(fmt, written[:written.index("Ni{ce}") + 4], 3, whole=False)
    assert cut[-1] == ("call", Call("get_weather", '{"city": "Ni{c'))
    # what only looks like a call inside a text answer's string stays text
    generic = family("<|im_start|>")
    answer = '{"response": "write {\\"name\\": \\"get_time\\", \\"arguments\\": {}}"}'
    assert _streamed(generic, answer, 4, whole=True) == [
        ("text", 'write {"name": "get_time", "arguments": {}}')]
