"""Ollama's native API under /api (``ollama`` for Python and JavaScript, Open WebUI's
Ollama connection), on the same port as the others.

Translation only: ``/api/chat`` and ``/api/generate`` become the core's conversation or
prompt and one worker call, streamed by default as NDJSON (one JSON object a line, the
last with ``done: true`` and the timings in nanoseconds); ``options`` map to the core's
sampling options by name, and an option this worker does not act on is a 400 naming it.
Model names may carry Ollama's tag (``smollm2:latest``); the tag is dropped. Errors are
Ollama's ``{"error": "..."}`` with the worker's code beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi.responses import Response

from ...errors import InferenceError
from ...models.gguf import details
from ...worker import InferenceWorker
from ..responses import JSON
from ..routing import Call, EventStream, Route, Table
from .shared import arguments_object, first_event, json_body

#: what /api/version answers: the Ollama API level these routes follow
OLLAMA_VERSION = "0.12.0"
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "min_p": "min_p", "num_predict": "max_tokens", "stop": "stop", "seed": "seed",
            "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty"}
_IGNORED = {"num_ctx"}  # checked against the model's context, then not passed on
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _invalid(message: str) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message)


def _model(payload: dict[str, Any]) -> str:
    name = payload.get("model")
    if not isinstance(name, str) or not name:
        raise _invalid("model (a string) is required")
    return name.removesuffix(":latest")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace(
        "+00:00", "Z")


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number, or a duration ("5m", "1h", "0"); a
    negative value keeps the model loaded. None when not given."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _invalid("keep_alive must be a number of seconds or a duration such as '5m'")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise _invalid("keep_alive must be a number of seconds or a duration such as '5m'")
    return float(match.group(1)) * _UNITS[match.group(2)]


async def _options(worker: InferenceWorker, model: str, payload: dict[str, Any]
                   ) -> dict[str, Any]:
    """Ollama's ``options`` and ``format`` as the core's options."""
    given = payload.get("options") or {}
    if not isinstance(given, dict):
        raise _invalid("options must be an object")
    unknown = sorted(set(given) - set(_OPTIONS) - _IGNORED)
    if unknown:
        raise _invalid(f"options this worker does not support: {unknown} (supported: "
                       f"{sorted(set(_OPTIONS) | _IGNORED)})")
    options = {_OPTIONS[k]: v for k, v in given.items() if k in _OPTIONS and v is not None}
    if options.get("max_tokens") is not None and options["max_tokens"] < 0:
        del options["max_tokens"]  # -1 (and -2): as long as the context allows
    if given.get("num_ctx") is not None:
        context = (await worker.check_capacity()).get("sequences", {}).get(
            model, {}).get("contextLength")
        if not isinstance(given["num_ctx"], int) or (context and given["num_ctx"] > context):
            raise _invalid(f"num_ctx {given['num_ctx']!r}: model '{model}' is loaded with "
                           f"{context} tokens of context per sequence; a larger one is set "
                           "in its model.json (contextLength), never per request")
    fmt = payload.get("format")
    if fmt == "json":
        options["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        options["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise _invalid('format must be "json" or a JSON schema')
    if payload.get("tools") is not None:
        options["tools"] = payload["tools"]
    return options


def _messages(value: Any) -> list[dict[str, Any]]:
    """Ollama's messages as the core's: tool calls carry arguments as objects and no id
    (one is made up so that results can name them), results name the tool."""
    if not isinstance(value, list) or not value:
        raise _invalid("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}] must be an object")
        if message.get("images"):
            raise _invalid(f"messages[{i}]: images are not supported by these models")
        entry: dict[str, Any] = {"role": message.get("role"),
                                 "content": message.get("content", "")}
        calls = message.get("tool_calls")
        if calls:
            entry["tool_calls"] = [
                {"id": f"call_{i}_{k}", "type": "function",
                 "function": {"name": (c.get("function") or {}).get("name"),
                              "arguments": (c.get("function") or {}).get("arguments", {})}}
                for k, c in enumerate(calls) if isinstance(c, dict)]
        if message.get("role") == "tool":
            entry["tool_call_id"] = _last_call(out, message.get("tool_name"))
            if message.get("tool_name"):
                entry["name"] = message["tool_name"]
        out.append(entry)
    return out


def _last_call(history: list[dict[str, Any]], name: Any) -> str:
    """The id of the latest call (to ``name``, where given) that a result answers."""
    for message in reversed(history):
        for call in reversed(message.get("tool_calls", ())):
            if name in (None, call["function"]["name"]):
                return str(call["id"])
    return "call_0"


def _timings(usage: dict[str, int], started: float, first: float | None, ended: float,
             reason: str) -> dict[str, Any]:
    first = first or ended
    return {"done": True, "done_reason": "length" if reason == "length" else "stop",
            "total_duration": int((ended - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": usage.get("promptTokens", 0),
            "prompt_eval_duration": int((first - started) * 1e9),
            "eval_count": usage.get("completionTokens", 0),
            "eval_duration": int((ended - first) * 1e9)}


def _line(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value) + b"\n"


class NDJSON(EventStream):
    media_type = "application/x-ndjson"

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:
        super().__init__(chunks)
        self.raw_headers = [(b"content-type", b"application/x-ndjson"),
                            (b"cache-control", b"no-cache")]


async def _generate(worker: InferenceWorker, call: Call, chat: bool) -> Response:
    payload = await json_body(call, worker)
    model = _model(payload)
    allowed = ({"model", "messages", "stream", "format", "options", "tools", "keep_alive",
                "think"} if chat else
               {"model", "prompt", "system", "stream", "format", "options", "keep_alive",
                "raw", "template", "images", "suffix", "context", "think"})
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise _invalid(f"fields this worker does not support: {unknown}")
    for name in ("template", "suffix", "context", "images"):
        if payload.get(name):
            raise _invalid(f"{name} is not supported (the model's own template is used)")
    if payload.get("think"):
        raise _invalid("think is not supported by these models")
    keep = keep_alive_seconds(payload.get("keep_alive"))
    options = await _options(worker, model, payload)
    if chat:
        input_data: dict[str, Any] = {"messages": _messages(payload.get("messages"))}
    elif payload.get("raw"):
        input_data = {"prompt": payload.get("prompt")}
    else:
        messages = [{"role": "user", "content": payload.get("prompt")}]
        if payload.get("system"):
            messages.insert(0, {"role": "system", "content": payload["system"]})
        input_data = {"messages": messages}
    if not chat and not payload.get("prompt"):  # Ollama's way of loading a model
        await worker.load_model(model)
        if keep is not None:
            worker.keep_alive(model, keep)
        return JSON({"model": model, "created_at": _now(), "response": "", "done": True,
                     "done_reason": "load"})
    stream = payload.get("stream", True)
    if not isinstance(stream, bool):
        raise _invalid("stream must be true or false")
    started = time.perf_counter()
    events = worker.stream_inference(model, input_data, options)
    await first_event(events)
    parts = _parts(worker, model, chat, events, started, keep)
    if stream:
        return NDJSON(_lines(parts))
    collected = [part async for part in parts]
    final = collected[-1]
    if "error" in final:
        raise InferenceError(final["code"], final["error"])
    if chat:
        calls = [c for p in collected for c in p["message"].get("tool_calls", ())]
        final["message"] = {"role": "assistant",
                            "content": "".join(p["message"]["content"] for p in collected)}
        if calls:
            final["message"]["tool_calls"] = calls
    else:
        final["response"] = "".join(p["response"] for p in collected)
    return JSON(final)


async def _lines(parts: AsyncGenerator[dict[str, Any], None]) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(parts):
        async for part in parts:
            yield _line(part)


async def _parts(worker: InferenceWorker, model: str, chat: bool,
                 events: AsyncGenerator[dict[str, Any], None], started: float,
                 keep: float | None) -> AsyncGenerator[dict[str, Any], None]:
    """The worker's events as Ollama's response objects (one NDJSON line each when
    streamed), the last with ``done`` and the timings; an error after the start is one
    ``{"error"}`` object."""
    first: float | None = None
    reason = "stop"

    def piece(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            return {"model": model, "created_at": _now(), "message": message, "done": False}
        return {"model": model, "created_at": _now(), "response": text, "done": False}

    async with contextlib.aclosing(events):
        try:
            async for event in events:
                kind = event["type"]  # one choice: this API has no n
                if kind == "delta" and event["text"]:
                    first = first or time.perf_counter()
                    yield piece(event["text"])
                elif kind == "toolCall":
                    first = first or time.perf_counter()
                    tool = event["call"]
                    yield piece("", [{"function": {
                        "name": tool["name"], "arguments": arguments_object(tool["arguments"])}}])
                elif kind == "finish":
                    reason = event["finishReason"]
                elif kind == "end":
                    last = piece("")
                    last.update(_timings(event["usage"], started, first,
                                         time.perf_counter(), reason))
                    yield last
        except InferenceError as exc:
            yield {"error": exc.message, "code": exc.code}
        finally:
            if keep is not None:
                worker.keep_alive(model, keep)


async def _chat(worker: InferenceWorker, call: Call) -> Response:
    return await _generate(worker, call, chat=True)


async def _generate_route(worker: InferenceWorker, call: Call) -> Response:
    return await _generate(worker, call, chat=False)


async def _version(worker: InferenceWorker, call: Call) -> Response:
    return JSON({"version": OLLAMA_VERSION})


def _digest(model_id: str, file: dict[str, Any]) -> str:
    """An identity for the model's file (Ollama's clients compare digests): a hash of its
    id, size and modification time, not of its bytes (hashing gigabytes per listing would
    cost seconds)."""
    text = f"{model_id}:{file.get('size')}:{file.get('modified')}"
    return hashlib.sha256(text.encode()).hexdigest()


async def _entry(worker: InferenceWorker, meta: dict[str, Any]) -> dict[str, Any]:
    file = await worker.model_file(meta["id"])
    name = f"{meta['id']}:latest"
    return {"name": name, "model": name, "modified_at": _iso(file.get("modified", 0)),
            "size": file.get("size", 0), "digest": _digest(meta["id"], file),
            "details": details(file.get("gguf", {}))}


def _language(meta: dict[str, Any]) -> bool:
    return meta.get("task") in ("text-generation", "text-embedding")


async def _tags(worker: InferenceWorker, call: Call) -> Response:
    listed = (await worker.list_models())["models"]
    return JSON({"models": [await _entry(worker, m) for m in listed
                            if _language(m) and m.get("state") != "failed"]})


async def _ps(worker: InferenceWorker, call: Call) -> Response:
    listed = (await worker.list_models())["models"]
    sequences = (await worker.check_capacity()).get("sequences", {})
    models = []
    for meta in listed:
        if meta.get("state") != "loaded" or not _language(meta):
            continue
        entry = await _entry(worker, meta)
        until = worker.unload_at.get(meta["id"])
        entry.update(size=meta.get("memoryBytes") or entry["size"], size_vram=0,
                     expires_at=_iso(until) if until else "0001-01-01T00:00:00Z",
                     context_length=sequences.get(meta["id"], {}).get("contextLength", 0))
        models.append(entry)
    return JSON({"models": models})


async def _show(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    model = _model(payload)
    meta = await worker.get_model(model)
    file = await worker.model_file(model)
    info = file.get("gguf", {})
    task = meta.get("task")
    capabilities = (["embedding"] if task == "text-embedding" else
                    ["completion", "tools"] if task == "text-generation" else [])
    template = info.get("tokenizer.chat_template", "")
    return JSON({"modelfile": "", "parameters": "", "template": template,
                 "details": details(info), "model_info": info,
                 "capabilities": capabilities,
                 "modified_at": _iso(file.get("modified", 0))})


async def _embed(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    model = _model(payload)
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _invalid("input must be a string or a list of strings")
    started = time.perf_counter()
    result = (await worker.run_inference(model, texts))["result"]
    if "embeddings" not in result:
        raise _invalid(f"model '{model}' does not make embeddings")
    keep = keep_alive_seconds(payload.get("keep_alive"))
    if keep is not None:
        worker.keep_alive(model, keep)
    return JSON({"model": model, "embeddings": result["embeddings"].tolist(),
                 "total_duration": int((time.perf_counter() - started) * 1e9),
                 "load_duration": 0, "prompt_eval_count": 0})


async def _embeddings(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    model = _model(payload)
    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        raise _invalid("prompt must be a string")
    result = (await worker.run_inference(model, [prompt]))["result"]
    if "embeddings" not in result:
        raise _invalid(f"model '{model}' does not make embeddings")
    return JSON({"embedding": result["embeddings"][0].tolist()})


async def _pull(worker: InferenceWorker, call: Call) -> Response:
    """Loads the model from the repository (or its drive), reporting the fetch's progress
    as Ollama's pull does."""
    payload = await json_body(call, worker)
    model = _model(payload)
    stream = payload.get("stream", True)
    loading = asyncio.ensure_future(worker.load_model(model))
    if not stream:
        await loading
        return JSON({"status": "success"})
    return NDJSON(_progress(worker, model, loading))


async def _progress(worker: InferenceWorker, model: str, loading: asyncio.Future[Any]
                    ) -> AsyncGenerator[bytes, None]:
    yield _line({"status": "pulling manifest"})
    try:
        while not loading.done():
            fetch = (await worker.get_model(model)).get("fetch")
            if fetch:
                yield _line({"status": f"pulling {model}", "digest": model,
                             "total": fetch.get("bytesTotal") or 0,
                             "completed": fetch.get("bytesDone") or 0})
            await asyncio.wait({loading}, timeout=0.5)
        await loading
        size = (await worker.get_model(model)).get("sizeBytes") or 0
        yield _line({"status": f"pulling {model}", "digest": model, "total": size,
                     "completed": size})
    except InferenceError as exc:
        yield _line({"error": exc.message, "code": exc.code})
        return
    finally:
        if not loading.done():
            loading.cancel()
    yield _line({"status": "verifying sha256 digest"})
    yield _line({"status": "success"})


async def _delete(worker: InferenceWorker, call: Call) -> Response:
    raise InferenceError("ERR_METHOD_NOT_ALLOWED",
                         "models cannot be deleted through the API: the repository is "
                         "read-only to callers")


_ERRORS = (400, 401, 404, 409, 413, 429, 500, 503, 504)

TABLE = Table("ollama", "Ollama API", (
    Route("GET", "/api/version", _version, summary="Ollama API version"),
    Route("GET", "/api/tags", _tags, summary="Language models (Ollama)", responses=(401,)),
    Route("GET", "/api/ps", _ps, summary="Loaded language models (Ollama)", responses=(401,)),
    Route("POST", "/api/show", _show, summary="One model (Ollama)", responses=_ERRORS),
    Route("POST", "/api/chat", _chat, fast=True, summary="Chat (Ollama)", responses=_ERRORS),
    Route("POST", "/api/generate", _generate_route, fast=True, summary="Generate (Ollama)",
          responses=_ERRORS),
    Route("POST", "/api/embed", _embed, summary="Embeddings (Ollama)", responses=_ERRORS),
    Route("POST", "/api/embeddings", _embeddings, summary="Embeddings, older route (Ollama)",
          responses=_ERRORS),
    Route("POST", "/api/pull", _pull, summary="Load a model with progress (Ollama)",
          responses=_ERRORS),
    Route("DELETE", "/api/delete", _delete, summary="Refused: the repository is read-only",
          responses=(405,)),
))
