"""Ollama's API with the real ``ollama`` Python client, unchanged, against a real worker
serving the bundled models."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import ollama
import pytest

from .helpers import EXAMPLES, Worker, examples_worker

QUESTION = [{"role": "user", "content": "Name the capital of France."}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with examples_worker(tmp_path_factory, "ollama", ["smollm2", "qwen2.5-coder"]) as w:
        yield w


@pytest.fixture(scope="module")
def api(llm: Worker) -> ollama.Client:
    return ollama.Client(host=llm.url, timeout=300)


def test_models_are_listed_with_their_gguf_details(api: ollama.Client, llm: Worker) -> None:
    assert httpx.get(f"{llm.url}/api/version").json()["version"]
    listed = {m.model: m for m in api.list().models}
    assert {"smollm2:latest", "qwen2.5-coder:latest", "gemma3:latest",
            "minilm:latest"} <= set(listed)
    smol = listed["smollm2:latest"]
    assert smol.details is not None and smol.details.format == "gguf"
    assert (smol.details.family, smol.details.parameter_size,
            smol.details.quantization_level) == ("llama", "135M", "Q4_1")
    assert smol.size == (EXAMPLES / "smollm2" / "model.gguf").stat().st_size
    loaded = {m.model: m for m in api.ps().models}
    assert {"smollm2:latest", "qwen2.5-coder:latest"} <= set(loaded)
    assert loaded["smollm2:latest"].size_vram == 0
    assert loaded["smollm2:latest"].context_length == 2048
    shown = api.show("smollm2")
    assert shown.capabilities == ["completion", "tools"] and shown.template


def test_chat_and_generate_answer_as_the_openai_route_does(api: ollama.Client,
                                                           llm: Worker) -> None:
    chat = api.chat(model="smollm2", messages=QUESTION, options=GREEDY)
    openai_text = httpx.post(f"{llm.url}/v1/chat/completions", json={
        "model": "smollm2", "messages": QUESTION, "temperature": 0},
        timeout=300).json()["choices"][0]["message"]["content"]
    assert "Paris" in chat.message.content and chat.message.content == openai_text
    assert chat.done and chat.done_reason == "stop"
    assert chat.prompt_eval_count and chat.eval_count and chat.eval_duration
    assert chat.total_duration and chat.total_duration >= chat.eval_duration
    streamed = list(api.chat(model="smollm2:latest", messages=QUESTION, options=GREEDY,
                             stream=True))
    assert "".join(p.message.content or "" for p in streamed) == chat.message.content
    assert [p.done for p in streamed].count(True) == 1 and streamed[-1].done
    generated = api.generate(model="smollm2", prompt="Name the capital of France.",
                             options=GREEDY)
    assert generated.response == chat.message.content
    short = api.chat(model="smollm2", messages=QUESTION, options={"num_predict": 2})
    assert short.done_reason == "length" and short.eval_count == 2


def test_tools_through_chat(api: ollama.Client) -> None:
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    answer = api.chat(model="qwen2.5-coder", options=GREEDY, tools=[tool],
                      messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    [call] = answer.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments["city"] == "Paris"


def test_embed_gives_the_openai_route_s_vectors(api: ollama.Client, llm: Worker) -> None:
    texts = ["A man plays a guitar.", "Stocks fell."]
    pulled = list(api.pull("minilm", stream=True))
    progress = [p.status for p in pulled]
    assert progress[0] == "pulling manifest" and progress[-1] == "success"
    sized = [p for p in pulled if p.total]
    assert sized and sized[-1].completed == sized[-1].total > 0
    embedded = api.embed(model="minilm", input=texts).embeddings
    reference = httpx.post(f"{llm.url}/v1/embeddings", json={"model": "minilm", "input": texts},
                           timeout=60).json()["data"]
    assert [list(v) for v in embedded] == [d["embedding"] for d in reference]
    assert list(api.embeddings(model="minilm", prompt=texts[0]).embedding) == \
        reference[0]["embedding"]


def test_keep_alive_sets_how_long_a_model_stays(api: ollama.Client) -> None:
    api.pull("gemma3")
    api.generate(model="gemma3", prompt="Q: 2+2?", options={"num_predict": 2},
                 keep_alive=-1)
    assert "gemma3:latest" in [m.model for m in api.ps().models]
    api.generate(model="gemma3", prompt="Q: 2+2?", options={"num_predict": 2},
                 keep_alive="1s")
    [entry] = [m for m in api.ps().models if m.model == "gemma3:latest"]
    assert entry.expires_at is not None and entry.expires_at.year > 2000
    deadline = time.monotonic() + 30
    while "gemma3:latest" in [m.model for m in api.ps().models]:
        assert time.monotonic() < deadline, "keep_alive 1s did not unload the model"
        time.sleep(0.2)
    api.generate(model="gemma3", prompt="")  # an empty prompt loads the model
    api.generate(model="gemma3", prompt="Q: 2+2?", options={"num_predict": 2}, keep_alive=0)
    deadline = time.monotonic() + 30
    while "gemma3:latest" in [m.model for m in api.ps().models]:
        assert time.monotonic() < deadline, "keep_alive 0 did not unload the model"
        time.sleep(0.2)


def test_errors_in_ollama_s_shape(api: ollama.Client, llm: Worker) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        api.chat(model="nope", messages=QUESTION)
    assert unknown.value.status_code == 404 and "nope" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as deleting:
        api.delete("smollm2")
    assert deleting.value.status_code == 405
    for options, word in (({"mirostat": 2}, "mirostat"), ({"num_ctx": 100_000}, "num_ctx")):
        r = httpx.post(f"{llm.url}/api/chat", json={
            "model": "smollm2", "messages": QUESTION, "options": options}, timeout=60)
        assert r.status_code == 400 and word in r.json()["error"], r.text
        assert r.json()["code"] == "ERR_INVALID_REQUEST"
    r = httpx.post(f"{llm.url}/api/generate", json={"model": "smollm2", "prompt": "x",
                                                    "template": "{{ .Prompt }}"}, timeout=60)
    assert r.status_code == 400 and "template" in r.json()["error"]


def test_the_javascript_client_chats(llm: Worker) -> None:
    """The ``ollama`` npm package, unchanged, from a plain Node script."""
    import json
    import subprocess

    from .helpers import ROOT

    done = subprocess.run(["node", str(ROOT / "tests" / "node" / "ollama_chat.js"), llm.url],
                          capture_output=True, text=True, timeout=300, check=True)
    answer = json.loads(done.stdout)
    assert "Paris" in answer["text"] and answer["streamed"] == answer["text"]
    assert answer["doneReason"] == "stop" and "smollm2:latest" in answer["models"]
