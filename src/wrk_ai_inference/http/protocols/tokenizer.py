"""A language model's tokenizer over HTTP, in vLLM's shapes (what lm-evaluation-harness's
remote tokenizer calls): ``GET /tokenizer_info``, ``POST /tokenize`` (a prompt, or
messages rendered by the chat template), ``POST /detokenize``.

These clients were written for one-model servers and may name no model: the worker's
``language_model`` picks ``defaultModel``, else the only loaded language model. Errors
are OpenAI's shape, as vLLM answers them.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from ...errors import InferenceError
from ...worker import InferenceWorker
from ..responses import JSON
from ..routing import Call, Route, Table
from .shared import json_body


def _invalid(message: str) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message)


async def _context(worker: InferenceWorker, model: str) -> int:
    sequences = (await worker.check_capacity()).get("sequences", {})
    return int(sequences.get(model, {}).get("contextLength", 0))


async def _info(worker: InferenceWorker, call: Call) -> Response:
    model = worker.language_model(call.query.get("model"))
    return JSON({"model": model, **(await worker.tokenizer_info(model))})


async def _tokenize(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    unknown = sorted(set(payload) - {"model", "prompt", "messages", "add_special_tokens",
                                     "add_generation_prompt"})
    if unknown:
        raise _invalid(f"fields this worker does not support: {unknown}")
    model = worker.language_model(payload.get("model"))
    add_special = payload.get("add_special_tokens", True)
    if not isinstance(add_special, bool):
        raise _invalid("add_special_tokens must be true or false")
    if ("prompt" in payload) == ("messages" in payload):
        raise _invalid("give prompt or messages")
    if "messages" in payload:
        tokens = await worker.tokenize(model, messages=payload["messages"])
    else:
        tokens = await worker.tokenize(model, text=payload["prompt"], add_special=add_special)
    return JSON({"tokens": tokens, "count": len(tokens),
                 "max_model_len": await _context(worker, model)})


async def _detokenize(worker: InferenceWorker, call: Call) -> Response:
    payload = await json_body(call, worker)
    model = worker.language_model(payload.get("model"))
    tokens: Any = payload.get("tokens")
    return JSON({"prompt": await worker.detokenize(model, tokens)})


_ERRORS = (400, 401, 404, 409, 413, 429, 500, 503, 504)

TABLE = Table("openai", "Tokenizer (vLLM's routes)", (
    Route("GET", "/tokenizer_info", _info, summary="The tokenizer's special tokens and "
          "chat template", query=("model",), responses=_ERRORS),
    Route("POST", "/tokenize", _tokenize, summary="Text or messages to tokens",
          responses=_ERRORS),
    Route("POST", "/detokenize", _detokenize, summary="Tokens to text", responses=_ERRORS),
))
