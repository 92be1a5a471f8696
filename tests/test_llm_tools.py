"""Tool calling and the agent protocols (OpenAI chat with tools, the Responses API,
Anthropic's Messages API, the seed API), with the real ``openai``, ``anthropic`` and
``openai-agents`` clients, unchanged, against a real worker serving the bundled GGUFs.

Qwen2.5-Coder-0.5B names the right tool and arguments, but after a tool's result it
repeats its call whatever the prompt or sampling (measured: docs/promises.md); the
conversations that go on past a result use the 1.5B of the same family, which answers
from the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from .agent_tools import HOSTILE_TOOLS, ODD_BUT_VALID, agent_toolset, schema_bytes
from .helpers import Worker, edit_spec, examples_worker, make_repo, running_worker

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
QUESTION = [{"role": "user", "content": "Name the capital of France."}]
ANSWER_FROM_RESULTS = ("You are a helpful assistant. When a tool response is given, answer "
                       "the user's question in one plain sentence using it; do not call the "
                       "tool again.")


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with examples_worker(tmp_path_factory, "tools",
                         ["smollm2", "qwen2.5-coder", "qwen2.5-coder-1.5b"]) as w:
        yield w


@pytest.fixture(scope="module")
def claude(llm: Worker) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=llm.url, api_key="unused", max_retries=0, timeout=300)


def _schema(name: str, tools: list[dict[str, Any]] = TOOLS) -> dict[str, Any]:
    return next(t["function"]["parameters"] for t in tools if t["function"]["name"] == name)


def _chat(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    kw.setdefault("messages", ASK)
    kw.setdefault("tools", TOOLS)
    return client.chat.completions.create(model=model, temperature=0, max_tokens=200, **kw)


@pytest.mark.parametrize("model", ["smollm2", "qwen2.5-coder"])
def test_a_named_tool_is_called_with_schema_valid_arguments(client: openai.OpenAI,
                                                            model: str) -> None:
    answer = _chat(client, model, tool_choice={"type": "function",
                                               "function": {"name": "get_time"}})
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_time" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), _schema("get_time"))
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0


def test_required_calls_one_of_the_tools(client: openai.OpenAI) -> None:
    choice = _chat(client, "qwen2.5-coder", tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls"
    for call in choice.message.tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), _schema(call.function.name))


def test_auto_calls_the_tool_that_fits(client: openai.OpenAI) -> None:
    choice = _chat(client, "qwen2.5-coder").choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"


def test_auto_answers_in_text_when_no_tool_fits_and_none_never_calls(
        client: openai.OpenAI) -> None:
    haiku = [{"role": "user", "content": "Write a haiku about the sea."}]
    for choice in (_chat(client, "qwen2.5-coder", messages=haiku).choices[0],
                   _chat(client, "qwen2.5-coder", tool_choice="none").choices[0]):
        assert choice.finish_reason == "stop" and not choice.message.tool_calls
        assert choice.message.content and "<tool_call>" not in choice.message.content


def test_after_the_result_the_model_answers_from_it(client: openai.OpenAI) -> None:
    model = "qwen2.5-coder-1.5b"
    messages: list[Any] = [{"role": "system", "content": ANSWER_FROM_RESULTS}, *ASK]
    first = _chat(client, model, messages=messages).choices[0].message
    [call] = first.tool_calls
    assert call.function.name == "get_weather"
    messages += [first.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id,
                  "content": json.dumps({"temperature_c": 18, "sky": "light rain"})}]
    answer = _chat(client, model, messages=messages).choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    assert "18" in answer.message.content


def test_a_streamed_call_arrives_as_call_deltas_never_as_text(client: openai.OpenAI) -> None:
    stream = _chat(client, "qwen2.5-coder", stream=True,
                   messages=[{"role": "user", "content": "What time is it in Tokyo?"}])
    texts, calls, reasons = [], {}, []
    for chunk in stream:
        delta = chunk.choices[0].delta
        texts.append(delta.content or "")
        for piece in delta.tool_calls or ():
            entry = calls.setdefault(piece.index, {"name": "", "arguments": "", "id": None})
            entry["id"] = entry["id"] or piece.id
            entry["name"] += piece.function.name or ""
            entry["arguments"] += piece.function.arguments or ""
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(texts) == ""
    assert list(calls) == [0] and calls[0]["name"] == "get_time" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"])["city"] == "Tokyo"
    assert reasons[-1] == "tool_calls"


@pytest.mark.parametrize("model", ["smollm2", "qwen2.5-coder"])
def test_a_forced_call_streams_its_arguments_as_they_are_written(
        client: openai.OpenAI, claude: anthropic.Anthropic, model: str) -> None:
    """The grammar writes the call, so it is announced at its name and its arguments
    follow in pieces, on all three protocols; joined, they are the unstreamed answer's."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = _chat(client, model, tool_choice=named).choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(whole.function.arguments), _schema("get_weather"))
    pieces = [piece for chunk in _chat(client, model, tool_choice=named, stream=True)
              for piece in chunk.choices[0].delta.tool_calls or ()]
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    assert pieces[0].function.arguments == "" and all(p.id is None for p in pieces[1:])
    assert len(pieces) > 3 and "".join(p.function.arguments or "" for p in pieces) \
        == whole.function.arguments
    events = list(client.responses.create(
        model=model, input="What is the weather in Paris?", tools=RESPONSE_TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
        stream=True))
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(deltas) > 3 and "".join(deltas) == done.arguments == whole.function.arguments
    kinds = [e.type for e in events]
    assert kinds.index("response.output_item.added") < kinds.index(
        "response.function_call_arguments.delta")
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    with claude.messages.stream(model=model, max_tokens=200, messages=ASK,  # type: ignore[arg-type]
                                tools=tools, tool_choice={"type": "tool", "name": "get_weather"},  # type: ignore[arg-type]
                                extra_body=GREEDY) as stream:
        parts = [e.delta.partial_json for e in stream if e.type == "content_block_delta"
                 and e.delta.type == "input_json_delta"]
        final = stream.get_final_message()
    assert len(parts) > 3 and json.loads("".join(parts)) == json.loads(
        whole.function.arguments) == final.content[0].input  # type: ignore[union-attr]


def test_the_seed_api_takes_the_same_tools(llm: Worker) -> None:
    body = {"inputData": {"messages": ASK},
            "options": {"tools": TOOLS, "temperature": 0,
                        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}}
    result = httpx.post(f"{llm.url}/api/inference/qwen2.5-coder", json=body,
                        timeout=300).json()["result"]
    assert result["finishReason"] == "tool_calls"
    [call] = result["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), _schema("get_weather"))


# ---- the Responses API --------------------------------------------------------------
RESPONSE_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]


def test_responses_answer_stream_and_equal_chat(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                          temperature=0, max_tokens=30)
    answer = client.responses.create(model="smollm2", input="Name the capital of France.",
                                     temperature=0, max_output_tokens=30)
    assert answer.status == "completed" and "Paris" in answer.output_text
    assert answer.output_text == chat.choices[0].message.content
    assert answer.usage.input_tokens == chat.usage.prompt_tokens
    kinds, text = [], ""
    for event in client.responses.create(model="smollm2", input="Name the capital of France.",
                                         temperature=0, max_output_tokens=30, stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == answer.output_text
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]


def test_responses_call_a_function_and_continue_from_the_stored_response(
        client: openai.OpenAI) -> None:
    model = "qwen2.5-coder-1.5b"
    first = client.responses.create(model=model, input="What is the weather in Paris?",
                                    instructions=ANSWER_FROM_RESULTS, tools=RESPONSE_TOOLS,  # type: ignore[arg-type]
                                    temperature=0)
    [call] = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] == "Paris"
    follow = client.responses.create(
        model=model, previous_response_id=first.id, instructions=ANSWER_FROM_RESULTS,
        tools=RESPONSE_TOOLS, temperature=0,  # type: ignore[arg-type]
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "18 degrees Celsius, light rain"}])
    assert follow.status == "completed" and "18" in follow.output_text
    assert client.responses.retrieve(first.id).id == first.id
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    stream = client.responses.create(model="qwen2.5-coder", input="What is the weather in Paris?",
                                     tools=RESPONSE_TOOLS, tool_choice="required",  # type: ignore[arg-type]
                                     stream=True)
    kinds = [event.type for event in stream]
    assert "response.function_call_arguments.done" in kinds
    assert "response.output_text.delta" not in kinds and kinds[-1] == "response.completed"


def test_responses_refuse_what_they_do_not_serve(llm: Worker) -> None:
    for body, word in (({"tools": [{"type": "web_search"}]}, "web_search"),
                       ({"background": True}, "background"),
                       ({"previous_response_id": "resp_nope"}, "resp_nope"),
                       ({"conversation": "x"}, "conversation")):
        r = httpx.post(f"{llm.url}/v1/responses",
                       json={"model": "smollm2", "input": "hi", **body}, timeout=60)
        assert r.status_code in (400, 404) and word in r.json()["error"]["message"], r.text


# ---- the Anthropic Messages API -----------------------------------------------------
GREEDY = {"temperature": 0}  # this SDK no longer sends sampling settings itself


def test_messages_answer_stream_and_count(claude: anthropic.Anthropic,
                                          client: openai.OpenAI) -> None:
    message = claude.messages.create(model="smollm2", max_tokens=30, messages=QUESTION,  # type: ignore[arg-type]
                                     extra_body=GREEDY)
    chat = client.chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                          temperature=0, max_tokens=30)
    [block] = message.content
    assert block.type == "text" and "Paris" in block.text
    assert block.text == chat.choices[0].message.content
    assert message.stop_reason == "end_turn"
    with claude.messages.stream(model="smollm2", max_tokens=30, messages=QUESTION,  # type: ignore[arg-type]
                                extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == block.text and final.usage.output_tokens == message.usage.output_tokens
    counted = claude.messages.count_tokens(model="smollm2", messages=QUESTION)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens == chat.usage.prompt_tokens
    stopped = claude.messages.create(model="smollm2", max_tokens=30, messages=QUESTION,  # type: ignore[arg-type]
                                     stop_sequences=["Paris"], extra_body=GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris"


def test_messages_forced_tool_gives_tool_use(claude: anthropic.Anthropic) -> None:
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    for model in ("smollm2", "qwen2.5-coder"):
        message = claude.messages.create(
            model=model, max_tokens=200, messages=ASK, tools=tools,  # type: ignore[arg-type]
            tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
        assert message.stop_reason == "tool_use"
        [use] = [b for b in message.content if b.type == "tool_use"]
        assert use.name == "get_weather"
        jsonschema.validate(use.input, _schema("get_weather"))
        with claude.messages.stream(model=model, max_tokens=200, messages=ASK,  # type: ignore[arg-type]
                                    tools=tools, tool_choice={"type": "any"},  # type: ignore[arg-type]
                                    extra_body=GREEDY) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [b.type for b in final.content] == ["tool_use"]


def test_messages_errors_in_anthropic_shape(llm: Worker) -> None:
    r = httpx.post(f"{llm.url}/v1/messages", json={"model": "smollm2", "messages": QUESTION},
                   timeout=60)
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"] and body["code"] == "ERR_INVALID_REQUEST"


# ---- the OpenAI Agents SDK ----------------------------------------------------------
def test_an_agent_uses_its_tool_through_both_openai_models(llm: Worker) -> None:
    import asyncio

    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        asked.append(city)
        return f"The weather in {city} is 18 degrees Celsius with light rain."

    async def run(kind: Any) -> str:
        api = openai.AsyncOpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0)
        agent = Agent(name="weather", instructions=ANSWER_FROM_RESULTS, tools=[get_weather],
                      model=kind(model="qwen2.5-coder-1.5b", openai_client=api),
                      model_settings=ModelSettings(temperature=0))
        result = await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        return str(result.final_output)

    for kind in (OpenAIChatCompletionsModel, OpenAIResponsesModel):
        asked.clear()
        answer = asyncio.run(run(kind))
        assert asked == ["Paris"] and "18" in answer, (kind.__name__, answer)


# ---- hostile and agent-sized toolsets ----------------------------------------------
def _required(llm: Worker, model: str, tools: list[dict[str, Any]], **options: Any
              ) -> httpx.Response:
    body = {"model": model, "messages": ASK, "tools": tools, "tool_choice": "required",
            "temperature": 0, "max_tokens": 120, **options}
    return httpx.post(f"{llm.url}/v1/chat/completions", json=body, timeout=300)


def test_hostile_toolsets_are_refused_naming_the_tool(llm: Worker) -> None:
    for what, tools, named in HOSTILE_TOOLS:
        r = _required(llm, "qwen2.5-coder", tools)
        assert r.status_code == 400, (what, r.text)
        assert named in r.json()["error"]["message"], (what, r.text)
    honest = _chat(openai.OpenAI(base_url=llm.url + "/v1", api_key="x"), "qwen2.5-coder",
                   tool_choice="required")
    assert honest.choices[0].finish_reason == "tool_calls"


def test_odd_but_valid_toolsets_are_answered_with_valid_calls(llm: Worker) -> None:
    for what, tools, ask in ODD_BUT_VALID:
        r = _required(llm, "qwen2.5-coder", tools, messages=[{"role": "user", "content": ask}])
        assert r.status_code == 200, (what, r.text)
        [call] = r.json()["choices"][0]["message"]["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]),
                            tools[0]["function"]["parameters"])


def test_response_format_and_tools_together(llm: Worker) -> None:
    """auto with a response format: a call, or a text answer in that format; required:
    the call (the format applies to text answers only)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"answer": {"type": "string"}},
        "required": ["answer"]}}}
    haiku = [{"role": "user", "content": "Write a haiku about the sea."}]
    body = {"model": "qwen2.5-coder", "messages": haiku, "tools": TOOLS, "temperature": 0,
            "max_tokens": 120, "response_format": fmt}
    message = httpx.post(f"{llm.url}/v1/chat/completions", json=body,
                         timeout=300).json()["choices"][0]["message"]
    if not message.get("tool_calls"):
        assert "answer" in json.loads(message["content"])
    r = _required(llm, "qwen2.5-coder", TOOLS, response_format=fmt)
    assert r.json()["choices"][0]["finish_reason"] == "tool_calls"


def test_an_agent_sized_toolset(tmp_path: Path) -> None:
    """50 tools, 100 KB of schemas (maxLength 10,000, enums, anyOf, nested objects and
    arrays, an empty-object schema): a call with valid arguments, the first time and
    again (the grammar is built once)."""
    tools = agent_toolset()
    assert schema_bytes(tools) >= 100_000
    repo = make_repo(tmp_path / "repo", {"qwen2.5-coder": "qwen2.5-coder"})
    edit_spec(repo / "qwen2.5-coder", contextLength=32768, parallel=1)
    with running_worker(repo, tmp_path / "w.log", preload=["qwen2.5-coder"],
                        inference_timeout=900_000) as w:
        for _ in range(2):
            r = _required(w, "qwen2.5-coder", tools,
                          tool_choice={"type": "function", "function": {"name": "tool_03"}})
            assert r.status_code == 200, r.text
            [call] = r.json()["choices"][0]["message"]["tool_calls"]
            assert call["function"]["name"] == "tool_03"
            jsonschema.validate(json.loads(call["function"]["arguments"]),
                                tools[5]["function"]["parameters"])
