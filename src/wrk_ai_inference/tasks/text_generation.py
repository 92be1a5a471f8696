"""Task ``text-generation``: a prompt or chat messages in, a stream of text out.

Requests use OpenAI's option names on every transport (the seed API and RPC as
well as ``/v1``), so one set of rules decides what a request may ask for: an
option this worker does not implement is refused with a 400, never ignored.
Chat messages become a prompt through the model's chat template (model.json's
``chatTemplate``, else the GGUF's own); a model with neither is refused at load,
because llama-cpp-python's silent fallback format makes base models answer with
an empty string.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from ..errors import InferenceError, first_line
from ..logs import request_id_var
from ..models.spec import ModelSpec
from ..runtimes.llama import Generation, LlamaSession, Sampling, check_fits
from .base import Task

#: Choices one request may ask for, stop strings it may give, logprobs it may list,
#: tokens it may bias, text parts one message may have.
MAX_N = 16
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024
MAX_PARTS = 256

_ROLES = {"system", "user", "assistant", "developer"}

#: Options handled by the engine, not the task (deadline, the id ``cancel`` names).
ENGINE_OPTIONS = {"timeout", "inferenceId"}


def _invalid(message: str) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message)


def _number(options: dict[str, Any], name: str, low: float, high: float,
            whole: bool = False, low_open: bool = False) -> Any:
    value = options.get(name)
    if value is None:
        return None
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value > high or (
            value <= low if low_open else value < low):
        kind = "a whole number" if whole else "a number"
        bracket = "(" if low_open else "["
        raise _invalid(f"{name} must be {kind} in {bracket}{low:g}, {high:g}]")
    return value


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)
            or len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops)):
        raise _invalid(f"stop must be a non-empty string or a list of at most {MAX_STOPS} "
                       f"of them, each at most {MAX_STOP_CHARS} characters")
    return list(stops)


def _constraint(response_format: Any) -> str | None:
    """What ``response_format`` asks the output to be, checked on the loop: None (text),
    "json" (any JSON), or a JSON schema as canonical text. Its grammar is made later,
    off the loop (``grammar``): turning a wide schema into one takes seconds."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _invalid("response_format.json_schema.schema must be a JSON Schema object")
        return json.dumps(schema, sort_keys=True)
    raise _invalid("response_format.type must be 'text', 'json_object' or 'json_schema'")


@functools.lru_cache(maxsize=32)
def grammar(constraint: str) -> str:
    """GBNF for a constraint of ``_constraint``; the same schema again costs nothing."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if constraint == "json":
        return str(JSON_GBNF)
    try:
        return str(json_schema_to_gbnf(constraint))
    except Exception as exc:  # the converter raises plain exceptions on what it lacks
        raise _invalid(f"response_format.json_schema cannot be turned into a grammar: "
                       f"{first_line(exc)}") from None


def _content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's content parts: only text ones are served
        if len(content) > MAX_PARTS:
            raise _invalid(f"messages[{index}].content has {len(content)} parts; at most "
                           f"{MAX_PARTS} are accepted")
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise _invalid(f"messages[{index}].content: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(f"messages[{index}].content must be a string or a list of text parts")


def _messages(value: Any, most: int) -> list[dict[str, str]]:
    """The messages, at most ``most`` of them (checked before any is looked at)."""
    if not isinstance(value, list) or not value:
        raise _invalid("messages must be a non-empty list of {role, content}")
    if len(value) > most:
        raise _invalid(f"{len(value)} messages cannot fit: the model's context holds "
                       f"{most} tokens, and every message takes at least one")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}] must be an object {{role, content}}")
        unknown = set(message) - {"role", "content", "name"}
        if unknown:
            raise _invalid(f"messages[{i}] has fields this worker does not support: "
                           f"{sorted(unknown)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _invalid(f"messages[{i}].role must be one of {sorted(_ROLES)}")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _content(message, i)})
    return out


def _logit_bias(value: Any, n_vocab: int) -> list[tuple[int, float]]:
    """OpenAI's ``logit_bias`` (token id as a string: a bias in [-100, 100])."""
    if value is None:
        return []
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise _invalid(f"logit_bias must be an object of at most {MAX_LOGIT_BIAS} token ids "
                       "to biases")
    out = []
    for key, bias in value.items():
        token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else -1
        if not 0 <= token < n_vocab:
            raise _invalid(f"logit_bias: {str(key)[:40]!r} is not a token id of this model "
                           f"(0 to {n_vocab - 1})")
        if isinstance(bias, bool) or not isinstance(bias, int | float) \
                or not -100 <= bias <= 100:
            raise _invalid(f"logit_bias[{key!r}] must be a number in [-100, 100]")
        out.append((token, float(bias)))
    return out


@dataclass
class GenerationRequest:
    """A validated request; ``prepare`` turns it into prompt tokens off the loop."""

    messages: list[dict[str, str]] | None
    prompt: str | None
    sampling: Sampling
    chat: bool
    constraint: str | None = None  # what the output must be (``_constraint``)


class TextGeneration(Task):
    name = "text-generation"
    streams = True

    def __init__(self, spec: ModelSpec, session: LlamaSession, model_id: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = spec.chat_template or session.chat_template
        if not template:
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model_id}' has no chat template: its GGUF carries none, so give "
                "one as chatTemplate in model.json (a base model answers a plain "
                "completion-style template such as 'Q: ...\\nA:')")
        try:
            self.formatter = Jinja2ChatFormatter(template, eos_token=session.eos_text,
                                                 bos_token=session.bos_text)
        except Exception as exc:  # jinja2's TemplateSyntaxError and friends
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}': its chat template does not parse: "
                                 f"{first_line(exc)}") from exc
        self.spec = spec
        self.model_id = model_id
        self.eos_text = session.eos_text
        self.session = session
        self.n_vocab = int(session.llm.n_vocab())
        self.cells = session.n_ctx
        #: the prompt's text beyond which it cannot fit, whatever the tokenizer makes of it
        self.max_chars = session.n_ctx * session.max_token_bytes

    # ---- one request ------------------------------------------------------------
    def request(self, data: Any, options: dict[str, Any]) -> GenerationRequest:
        """Validate on the loop, before a slot is taken: bad input never holds one."""
        if isinstance(data, str):
            data = {"prompt": data}
        if not isinstance(data, dict) or len({"prompt", "messages"} & set(data)) != 1 \
                or set(data) - {"prompt", "messages"}:
            raise InferenceError("ERR_INVALID_INPUT",
                                 'inputData must be {"prompt": "..."} or {"messages": '
                                 '[{"role", "content"}, ...]}')
        unknown = set(options) - _OPTION_NAMES - ENGINE_OPTIONS
        if unknown:
            raise _invalid(f"options this model does not support: {sorted(unknown)} "
                           f"(supported: {sorted(_OPTION_NAMES)})")
        sampling = self._sampling(options)
        messages: list[dict[str, str]] | None = None
        prompt: str | None = None
        if "messages" in data:
            messages = _messages(data["messages"], self.cells)
            size = sum(len(m["content"]) for m in messages)
            stops = [self.eos_text] if self.eos_text else []
        else:
            prompt = data["prompt"]
            if not isinstance(prompt, str) or not prompt:
                raise InferenceError("ERR_INVALID_INPUT", "prompt must be a non-empty string")
            size, stops = len(prompt), []
        if size > self.max_chars:  # refused in time linear in the input, untokenised
            raise InferenceError(
                "ERR_INVALID_INPUT",
                f"the prompt's text is {size} characters; model '{self.model_id}' has a "
                f"context of {self.cells} tokens per sequence, which no text over "
                f"{self.max_chars} characters fits", {"contextLength": self.cells})
        sampling.stop = [*sampling.stop, *self.spec.stop, *stops]
        return GenerationRequest(messages, prompt, sampling, messages is not None,
                                 _constraint(options.get("response_format")))

    def prepare(self, request: GenerationRequest) -> list[int]:
        """The prompt's tokens: the chat template rendered and the text tokenised, and the
        output's grammar made from its constraint. Costly on big inputs, so it runs on a
        helper thread after admission, under the request's deadline (the engine's
        ``_off_loop``); neither the event loop nor the model's thread waits on it."""
        if request.messages is not None:
            try:
                formatted = self.formatter(messages=request.messages)  # type: ignore[arg-type]
            except Exception as exc:  # the template's raise_exception, bad roles...
                raise InferenceError("ERR_INVALID_INPUT", "the model's chat template refused "
                                     f"these messages: {first_line(exc)}") from None
            text, add_bos = formatted.prompt, not formatted.added_special
        else:
            assert request.prompt is not None
            text, add_bos = request.prompt, True
        tokens = self.session.tokenize(text, add_bos)
        check_fits(len(tokens), request.sampling.max_tokens, self.cells, self.model_id)
        if request.constraint is not None:
            request.sampling.grammar = grammar(request.constraint)
        return tokens

    def _sampling(self, o: dict[str, Any]) -> Sampling:
        d = self.spec.sampling
        max_tokens = _number(o, "max_tokens", 1, 1 << 20, whole=True)
        max_completion = _number(o, "max_completion_tokens", 1, 1 << 20, whole=True)
        if max_tokens is not None and max_completion is not None:
            raise _invalid("give max_tokens or max_completion_tokens, not both")
        logprobs = o.get("logprobs")
        top = _number(o, "top_logprobs", 0, MAX_TOP_LOGPROBS, whole=True)
        if isinstance(logprobs, bool) or logprobs is None:
            wanted = (top or 0) if logprobs else None
            if top is not None and not logprobs:
                raise _invalid("top_logprobs needs logprobs: true")
        else:  # the completions API's logprobs is a count
            wanted = _number(o, "logprobs", 0, MAX_TOP_LOGPROBS, whole=True)
        seed = _number(o, "seed", -(1 << 63), (1 << 63) - 1, whole=True)

        def pick(name: str, value: Any) -> Any:
            return value if o.get(name) is None else o[name]

        for name, low, high, open_low in (("temperature", 0, 2, False), ("top_p", 0, 1, True),
                                          ("min_p", 0, 1, False),
                                          ("frequency_penalty", -2, 2, False),
                                          ("presence_penalty", -2, 2, False),
                                          ("repeat_penalty", 0, 10, True)):
            _number(o, name, low, high, low_open=open_low)
        _number(o, "top_k", 0, 1 << 20, whole=True)
        n = _number(o, "n", 1, MAX_N, whole=True) or 1
        return Sampling(
            max_tokens=max_completion or max_tokens, default_max_tokens=d.max_tokens,
            temperature=float(pick("temperature", d.temperature)),
            top_p=float(pick("top_p", d.top_p)), top_k=int(pick("top_k", d.top_k)),
            min_p=float(pick("min_p", d.min_p)),
            repeat_penalty=float(pick("repeat_penalty", d.repeat_penalty)),
            frequency_penalty=float(o.get("frequency_penalty") or 0.0),
            presence_penalty=float(o.get("presence_penalty") or 0.0),
            seed=None if seed is None else seed % (1 << 31),
            stop=_stops(o.get("stop")), logprobs=wanted,
            n=n,
            logit_bias=_logit_bias(o.get("logit_bias"), self.n_vocab))

    def generation(self, request: GenerationRequest, tokens: list[int], deliver: Any
                   ) -> Generation:
        return Generation(tokens, request.sampling, deliver, request_id_var.get() or "-")


_OPTION_NAMES = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                 "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty", "seed",
                 "stop", "logprobs", "top_logprobs", "n", "response_format", "logit_bias"}


class Collector:
    """A generation's events gathered into one answer (non-streaming requests)."""

    def __init__(self) -> None:
        self.inference_id = ""
        self.chat = False
        self.texts: list[list[str]] = []
        self.logprobs: list[list[dict[str, Any]]] = []
        self.reasons: list[str | None] = []
        self.want_logprobs = False
        self.usage: dict[str, int] = {}

    def add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            self.inference_id, self.chat = event["inferenceId"], event["chat"]
            n = event["n"]
            self.texts = [[] for _ in range(n)]
            self.logprobs = [[] for _ in range(n)]
            self.reasons = [None] * n
        elif kind == "delta":
            self.texts[event["index"]].append(event["text"])
            if event["logprob"] is not None:
                self.want_logprobs = True
                self.logprobs[event["index"]].append(event["logprob"])
        elif kind == "finish":
            self.reasons[event["index"]] = event["finishReason"]
        elif kind == "end":
            self.usage = event["usage"]
            self.reasons = [r or event["finishReason"] or "stop" for r in self.reasons]

    def choices(self) -> list[dict[str, Any]]:
        out = []
        for i, (parts, reason) in enumerate(zip(self.texts, self.reasons, strict=True)):
            choice: dict[str, Any] = {"index": i, "text": "".join(parts),
                                      "finishReason": reason}
            if self.want_logprobs:
                choice["logprobs"] = self.logprobs[i]
            out.append(choice)
        return out

    def result(self) -> dict[str, Any]:
        """The seed API's and RPC's answer: the first choice's text (and message, for a
        chat), its finish reason, usage, and every choice."""
        choices = self.choices()
        result: dict[str, Any] = {"text": choices[0]["text"],
                                  "finishReason": choices[0]["finishReason"],
                                  "usage": self.usage, "choices": choices}
        if self.chat:
            result["message"] = {"role": "assistant", "content": choices[0]["text"]}
        return result
