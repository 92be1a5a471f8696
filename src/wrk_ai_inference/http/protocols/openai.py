"""The OpenAI API under /v1, as the ``openai`` client calls it, on the same core.

Each route translates an OpenAI request into one worker call (``run_inference`` or
``stream_inference``) and the worker's answer into OpenAI's shapes, nothing more:
validation, admission, deadlines and cancellation live in the engine and the
``text-generation`` task. A field this worker does not implement is refused with a
400 naming it, never ignored. ``stream: true`` answers with server-sent events
ending in ``data: [DONE]``; a client that goes away stops its generation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson
from fastapi.responses import Response

from ...errors import InferenceError
from ...worker import InferenceWorker
from ..responses import JSON
from ..routing import Call, EventStream, Route, Table
from .shared import first_event, json_body

#: Fields every generation request may carry besides the sampling options, which
#: go to the task as they are (it refuses the ones it does not know).
_COMMON = {"model", "stream", "stream_options", "user"}
_SAMPLING = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
             "repeat_penalty", "frequency_penalty", "presence_penalty", "seed", "stop",
             "logprobs", "top_logprobs", "n", "response_format", "logit_bias",
             "prompt_lookup"}
_TOOLS = {"tools", "tool_choice", "parallel_tool_calls"}
_CHAT_FIELDS = _COMMON | _SAMPLING | _TOOLS | {"messages"}
_COMPLETION_FIELDS = (_COMMON | (_SAMPLING - {"max_completion_tokens", "top_logprobs"})
                      | {"prompt", "echo", "suffix", "best_of"})


def _invalid(message: str, param: str | None = None) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message, {"param": param} if param else None)


def _model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model (a string) is required", "model")
    return model


def _options(payload: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise _invalid(f"fields this worker does not support: {unknown}", unknown[0])
    stream_options = payload.get("stream_options")
    if stream_options is not None and (not isinstance(stream_options, dict)
                                       or set(stream_options) - {"include_usage"}):
        raise _invalid("stream_options may only hold include_usage", "stream_options")
    return {k: v for k, v in payload.items() if k in _SAMPLING | _TOOLS and v is not None}


def _stream_flag(payload: dict[str, Any]) -> tuple[bool, bool]:
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream must be true or false", "stream")
    usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    return stream, usage


def _usage(usage: dict[str, int]) -> dict[str, Any]:
    return {"prompt_tokens": usage.get("promptTokens", 0),
            "completion_tokens": usage.get("completionTokens", 0),
            "total_tokens": usage.get("totalTokens", 0),
            "prompt_tokens_details": {"cached_tokens": usage.get("cachedTokens", 0)}}


def _chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {"content": [{"token": e["token"], "logprob": e["logprob"],
                         "bytes": list(e["token"].encode("utf-8")),
                         "top_logprobs": [{"token": t, "logprob": lp,
                                           "bytes": list(t.encode("utf-8"))}
                                          for t, lp in e.get("top", [])]}
                        for e in entries], "refusal": None}


def _text_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0
                   ) -> dict[str, Any] | None:
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [dict(e.get("top") or []) or None for e in entries],
            "text_offset": offsets}


def _sse(value: Any) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


class _Shapes:
    """What differs between chat and plain completions: ids, objects, choice shapes."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.created = int(time.time())
        self.logprobs_asked = False
        self.object = "chat.completion" if chat else "text_completion"

    def ident(self, inference_id: str) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + inference_id

    def choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        logprobs = choice.get("logprobs")
        if self.chat:
            calls = choice.get("toolCalls")
            message: dict[str, Any] = {"role": "assistant",
                                       "content": choice["text"] or (None if calls else "")}
            if calls:
                message["tool_calls"] = calls
            return {"index": choice["index"], "message": message,
                    "logprobs": _chat_logprobs(logprobs),
                    "finish_reason": choice["finishReason"]}
        text = choice["text"]
        if "promptLogprobs" in choice:  # echo: the prompt, then the answer
            text = choice["prompt"] + text
            if self.logprobs_asked:  # the prompt's come first
                logprobs = [*choice["promptLogprobs"], *(logprobs or [])]
        return {"index": choice["index"], "text": text,
                "logprobs": _text_logprobs(logprobs), "finish_reason": choice["finishReason"]}

    def chunk(self, inference_id: str, choices: list[dict[str, Any]],
              usage: dict[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.ident(inference_id),
                                "object": self.object + (".chunk" if self.chat else ""),
                                "created": self.created, "model": self.model,
                                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def delta(self, event: dict[str, Any], offsets: dict[int, int]) -> dict[str, Any]:
        index, logprob = event["index"], event["logprob"]
        entries = [logprob] if logprob is not None else None
        if self.chat:
            return {"index": index, "delta": {"content": event["text"]},
                    "logprobs": _chat_logprobs(entries), "finish_reason": None}
        offset = offsets.get(index, 0)
        offsets[index] = offset + len(event["text"])
        return {"index": index, "text": event["text"],
                "logprobs": _text_logprobs(entries, offset), "finish_reason": None}

    @staticmethod
    def call(event: dict[str, Any]) -> dict[str, Any]:
        """A tool call's delta: its first (index, id, name, no arguments yet), or the next
        piece of its arguments."""
        call = event["call"]
        if event["type"] == "toolCallArguments":
            tool = {"index": call["index"], "function": {"arguments": call["arguments"]}}
        else:
            tool = {"index": call["index"], "id": call["id"], "type": "function",
                    "function": {"name": call["name"], "arguments": ""}}
        return {"index": event["index"], "delta": {"tool_calls": [tool]},
                "logprobs": None, "finish_reason": None}

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        if self.chat:
            return {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
        return {"index": index, "text": "", "logprobs": None, "finish_reason": reason}


async def _generate(worker: InferenceWorker, call: Call, chat: bool) -> Response:
    payload = await json_body(call, worker)
    model = _model(payload)
    options = _options(payload, _CHAT_FIELDS if chat else _COMPLETION_FIELDS)
    stream, include_usage = _stream_flag(payload)
    if chat:
        inputs: list[dict[str, Any]] = [{"messages": payload.get("messages")}]
    else:
        inputs = _prompts(payload)
        if payload.get("echo"):
            if stream:
                raise _invalid("echo is not supported with stream", "echo")
            options["echo"] = True
    shapes = _Shapes(chat, model)
    shapes.logprobs_asked = payload.get("logprobs") not in (None, False)
    if len(inputs) > 1 and stream:
        raise _invalid("one prompt per streamed request", "prompt")
    if not stream:  # a batch of prompts: each a request of its own, run side by side
        answers = await asyncio.gather(*(worker.run_inference(model, i, options)
                                          for i in inputs))
        choices: list[dict[str, Any]] = []
        usage = {"promptTokens": 0, "completionTokens": 0, "totalTokens": 0, "cachedTokens": 0}
        for answer in answers:
            result = answer["result"]
            for choice in result["choices"]:
                choices.append(shapes.choice({**choice, "index": len(choices)}))
            usage = {k: usage[k] + result["usage"].get(k, 0) for k in usage}
        return JSON({"id": shapes.ident(answers[0]["inferenceId"]), "object": shapes.object,
                     "created": shapes.created, "model": model, "choices": choices,
                     "usage": _usage(usage), "system_fingerprint": None})
    input_data = inputs[0]
    events = worker.stream_inference(model, input_data, options)
    start = await first_event(events)
    return EventStream(_sse_chunks(shapes, start, events, include_usage))


async def _chat(worker: InferenceWorker, call: Call) -> Response:
    return await _generate(worker, call, chat=True)


async def _completions(worker: InferenceWorker, call: Call) -> Response:
    return await _generate(worker, call, chat=False)


async def _embeddings(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    model = _model(payload)
    unknown = sorted(set(payload) - {"model", "input", "encoding_format", "user"})
    if unknown:
        raise _invalid(f"fields this worker does not support: {unknown}", unknown[0])
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _invalid("encoding_format must be 'float' or 'base64'", "encoding_format")
    texts = payload.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _invalid("input must be a string or a list of strings", "input")
    entry = worker.models.entry(model)
    if entry.spec is not None and entry.spec.task != "text-embedding":
        raise _invalid(f"model '{model}' is a {entry.spec.task} model, not text-embedding",
                       "model")
    result = (await worker.run_inference(model, texts))["result"]
    if "embeddings" not in result:
        raise _invalid(f"model '{model}' does not make embeddings", "model")
    matrix = result["embeddings"]
    # base64: the float32 values' little-endian bytes (what the openai client asks for)
    vectors = (matrix.tolist() if encoding == "float" else
               [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in matrix])
    return JSON({"object": "list", "model": model,
                 "data": [{"object": "embedding", "index": i, "embedding": v}
                          for i, v in enumerate(vectors)],
                 "usage": {"prompt_tokens": 0, "total_tokens": 0}})


def _describe(meta: dict[str, Any]) -> dict[str, Any]:
    loaded = meta.get("loadedAt")
    return {"id": meta["id"], "object": "model",
            "created": int(loaded / 1000) if loaded else 0, "owned_by": "wrk-ai-inference"}


async def _models(worker: InferenceWorker, call: Call) -> Response:
    listed = await worker.models.list_models()
    return JSON({"object": "list",
                 "data": [_describe(m) for m in listed if m.get("state") != "failed"]})


async def _model_info(worker: InferenceWorker, call: Call) -> Response:
    return JSON(_describe(await worker.models.get_model(call.params["model"])))


_ERRORS = (400, 401, 404, 409, 413, 429, 500, 503, 504)

TABLE = Table("openai", "OpenAI API", (
    Route("POST", "/v1/chat/completions", _chat, fast=True, summary="Chat completion",
          responses=_ERRORS),
    Route("POST", "/v1/completions", _completions, fast=True, summary="Completion",
          responses=_ERRORS),
    Route("POST", "/v1/embeddings", _embeddings, summary="Embeddings", responses=_ERRORS),
    Route("GET", "/v1/models", _models, summary="List models", responses=(401,)),
    Route("GET", "/v1/models/{model}", _model_info, summary="One model",
          responses=(401, 404)),
))


#: prompts one completions request may carry (each runs as a request of its own)
MAX_PROMPTS = 64


def _prompts(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The completions API's ``prompt``: a string, token ids, or a list of either."""
    prompt = payload.get("prompt")
    if payload.get("suffix") is not None:
        raise _invalid("suffix is not supported", "suffix")
    if payload.get("best_of") not in (None, 1):
        raise _invalid("best_of is not supported (use n)", "best_of")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                   and all(isinstance(t, int) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_PROMPTS:
        raise _invalid(f"prompt must be a string, token ids, or a list of at most "
                       f"{MAX_PROMPTS} of either", "prompt")
    out: list[dict[str, Any]] = []
    for one in prompt:
        if isinstance(one, str) and one:
            out.append({"prompt": one})
        elif isinstance(one, list):
            out.append({"tokens": one})  # checked against the vocabulary by the task
        else:
            raise _invalid("each prompt must be a non-empty string or a list of token ids",
                           "prompt")
    return out


async def _sse_chunks(shapes: _Shapes, start: dict[str, Any],
                      events: AsyncGenerator[dict[str, Any], None], include_usage: bool
                      ) -> AsyncGenerator[bytes, None]:
    """The worker's events as OpenAI's chunks; an error after the start is sent as an
    ``error`` event (the status line has gone out already)."""
    inference_id = start["inferenceId"]
    chunk: Callable[..., dict[str, Any]] = lambda choices, usage=None: shapes.chunk(  # noqa: E731
        inference_id, choices, usage)
    offsets: dict[int, int] = {}
    pending: set[int] = set(range(start["n"]))
    async with contextlib.aclosing(events):
        if shapes.chat:
            yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                               "logprobs": None, "finish_reason": None}
                              for i in range(start["n"])]))
        try:
            async for event in events:
                kind = event["type"]
                if kind == "delta":
                    yield _sse(chunk([shapes.delta(event, offsets)]))
                elif kind in ("toolCallStart", "toolCallArguments"):
                    yield _sse(chunk([shapes.call(event)]))
                elif kind == "finish":
                    pending.discard(event["index"])
                    yield _sse(chunk([shapes.finish(event["index"], event["finishReason"])]))
                elif kind == "end":
                    for index in sorted(pending):
                        yield _sse(chunk([shapes.finish(index, event["finishReason"] or "stop")]))
                    if include_usage:
                        yield _sse(chunk([], _usage(event["usage"])))
        except InferenceError as exc:
            yield _sse(exc.to_openai_dict())
    yield b"data: [DONE]\n\n"
