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

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import InferenceError, first_line
from ..logs import request_id_var
from ..models.spec import ModelSpec
from ..runtimes.llama import Generation, Grammar, LlamaSession, Sampling, check_fits
from .base import StreamingTask
from .chat import conversation
from .chat.calls import CallStream, call_id
from .chat.formats import Call, family
from .chat.grammars import calls_grammar, schema_grammar
from .chat.tools import Toolset, toolset

#: Choices one request may ask for, stop strings it may give, logprobs it may list,
#: tokens it may bias, text parts one message may have.
MAX_N = 16
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024

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

    messages: list[dict[str, Any]] | None
    prompt: str | None
    sampling: Sampling
    chat: bool
    constraint: str | None = None  # what a text answer must be (``_constraint``)
    tools: Toolset | None = None  # tools the model may call (None: none offered)
    asked_stops: list[str] = field(default_factory=list)  # the request's own stop strings
    tokens: list[int] | None = None  # a prompt given as token ids


@dataclass
class Prompt:
    """What ``prepare`` makes off the loop: the prompt's tokens and the output's grammar."""

    tokens: list[int]
    grammar: Grammar | None = None


class TextGeneration(StreamingTask):
    name = "text-generation"

    def __init__(self, spec: ModelSpec, session: LlamaSession, model_id: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = spec.chat_template or session.chat_template
        if not template:
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model_id}' has no chat template: its GGUF carries none, so give "
                "one as chatTemplate in model.json (a base model answers a plain "
                "completion-style template such as 'Q: ...\\nA:')")
        try:  # Jinja's sandbox: templates come from model files, which come from peers
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
        #: how this template writes tool calls (``chat.formats``)
        self.format = family(template)
        trigger = self.format.trigger
        tokens = session.tokenize(trigger, False) if trigger else []
        #: the trigger as one special token, when the vocabulary has it as one
        self.trigger_tokens = tokens if len(tokens) == 1 and trigger and \
            session.token_text(tokens[0]) == trigger else []

    # ---- one request ------------------------------------------------------------
    def request(self, data: Any, options: dict[str, Any]) -> GenerationRequest:
        """Validate on the loop, before a slot is taken: bad input never holds one."""
        if isinstance(data, str):
            data = {"prompt": data}
        kinds = {"prompt", "messages", "tokens"}
        if not isinstance(data, dict) or len(kinds & set(data)) != 1 or set(data) - kinds:
            raise InferenceError("ERR_INVALID_INPUT",
                                 'inputData must be {"prompt": "..."}, {"messages": '
                                 '[{"role", "content"}, ...]} or {"tokens": [ids]}')
        unknown = set(options) - _OPTION_NAMES - ENGINE_OPTIONS
        if unknown:
            raise _invalid(f"options this model does not support: {sorted(unknown)} "
                           f"(supported: {sorted(_OPTION_NAMES)})")
        sampling = self._sampling(options)
        tools = toolset(options.get("tools"), options.get("tool_choice"),
                        options.get("parallel_tool_calls"))
        messages: list[dict[str, Any]] | None = None
        prompt: str | None = None
        token_ids: list[int] | None = None
        if "tokens" in data:  # a prompt given as token ids (lm-evaluation-harness)
            token_ids = self._token_ids(data["tokens"])
            if tools is not None:
                raise _invalid("tools need messages (a chat), not a prompt")
            size, stops = 0, []
        elif "messages" in data:
            messages = conversation.messages(data["messages"], self.cells)
            size = conversation.text_size(messages) + (len(tools.key) if tools else 0)
            stops = [self.eos_text] if self.eos_text else []
        else:
            prompt = data["prompt"]
            if not isinstance(prompt, str) or not prompt:
                raise InferenceError("ERR_INVALID_INPUT", "prompt must be a non-empty string")
            if tools is not None:
                raise _invalid("tools need messages (a chat), not a prompt")
            size, stops = len(prompt), []
        if size > self.max_chars:  # refused in time linear in the input, untokenised
            raise InferenceError(
                "ERR_INVALID_INPUT",
                f"the prompt's text is {size} characters; model '{self.model_id}' has a "
                f"context of {self.cells} tokens per sequence, which no text over "
                f"{self.max_chars} characters fits", {"contextLength": self.cells})
        asked = list(sampling.stop)
        sampling.stop = [*sampling.stop, *self.spec.stop, *stops]
        if tools is not None and tools.choice == "none":
            tools = None  # the model is not told of tools it may not call
        if sampling.echo and (messages is not None or sampling.n != 1):
            raise _invalid("echo needs a prompt (not messages) and n 1")
        return GenerationRequest(messages, prompt, sampling, messages is not None,
                                 _constraint(options.get("response_format")), tools, asked,
                                 token_ids)

    def _token_ids(self, value: Any) -> list[int]:
        if not isinstance(value, list) or not value or len(value) >= self.cells or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.n_vocab
                for t in value):
            raise InferenceError("ERR_INVALID_INPUT",
                                 f"tokens must be a non-empty list of fewer than {self.cells} "
                                 f"token ids of this model (0 to {self.n_vocab - 1})")
        return list(value)

    def prepare(self, request: GenerationRequest) -> Prompt:
        """The prompt's tokens: the chat template rendered and the text tokenised, and the
        output's grammar made from its constraint and tools. Costly on big inputs, so it
        runs on a helper thread after admission, under the request's deadline (the
        engine's ``_off_loop``); neither the event loop nor the model's thread waits on
        it."""
        if request.tokens is not None:
            check_fits(len(request.tokens), request.sampling.max_tokens, self.cells,
                       self.model_id)
            return Prompt(list(request.tokens), self._grammar(request))
        if request.messages is not None:
            text, add_bos = self._render(request.messages, request.tools), False
        else:
            assert request.prompt is not None
            text, add_bos = request.prompt, True
        tokens = self.session.tokenize(text, add_bos)
        check_fits(len(tokens), request.sampling.max_tokens, self.cells, self.model_id)
        grammar = self._grammar(request)
        if grammar is not None and not self.session.grammar_parses(grammar.text):
            what = "the tools" if request.tools is not None else "response_format"
            raise _invalid(f"{what} make a grammar llama.cpp refuses (too many repetitions "
                           "or rules): simplify the schemas")
        return Prompt(tokens, grammar)

    def _render(self, messages: list[dict[str, Any]], tools: Toolset | None) -> str:
        offered: list[dict[str, Any]] | None = None
        if tools is not None:
            messages, offered = self.format.conversation(messages, tools)
        try:
            formatted = self.formatter(messages=messages, tools=offered)  # type: ignore[arg-type]
        except Exception as exc:  # the template's raise_exception, bad roles...
            raise InferenceError("ERR_INVALID_INPUT", "the model's chat template refused "
                                 f"these messages: {first_line(exc)}") from None
        return str(formatted.prompt)

    def _grammar(self, request: GenerationRequest) -> Grammar | None:
        """The output's grammar: the tools' calls (for the whole answer when a call is
        required or the format is JSON, else from the call's trigger on), and the
        response format's where the answer may be text."""
        tools, fmt = request.tools, self.format
        if tools is None:
            return None if request.constraint is None else Grammar(
                schema_grammar(request.constraint))
        answer, mode = fmt.plan(tools, request.constraint)
        if mode is None:
            return None
        text = calls_grammar(tools.key, tuple(t.name for t in tools.offered),
                             fmt.arguments_key, fmt.root(tools, answer is not None),
                             None if answer is None else json.dumps(answer, sort_keys=True))
        if mode == "whole":
            return Grammar(text)
        assert fmt.trigger is not None
        return Grammar(text, patterns=[] if self.trigger_tokens else
                       ["[\\s\\S]*?(" + _regex(fmt.trigger) + ")"],
                       tokens=self.trigger_tokens)

    def _sampling(self, o: dict[str, Any]) -> Sampling:
        d = self.spec.sampling
        echo = o.get("echo", False)
        if not isinstance(echo, bool):
            raise _invalid("echo must be true or false")
        # max_tokens 0 scores the prompt only: it needs echo, or nothing would come back
        max_tokens = _number(o, "max_tokens", 0 if echo else 1, 1 << 20, whole=True)
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
        lookup = _number(o, "prompt_lookup", 0, 16, whole=True)
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
            n=n, echo=echo,
            logit_bias=_logit_bias(o.get("logit_bias"), self.n_vocab),
            prompt_lookup=None if lookup is None else int(lookup))

    def generation(self, request: GenerationRequest, deliver: Any) -> Generation:
        return Generation([], request.sampling, deliver, request_id_var.get() or "-")

    def shaper(self, request: GenerationRequest) -> Shaper:
        return Shaper(request, self.format)

    def submit(self, job: Generation) -> None:
        self.session.submit(job)

    def collector(self) -> Collector:
        return Collector()

    # ---- the tokenizer routes -------------------------------------------------------
    def tokenize(self, text: Any, add_special: bool) -> list[int]:
        if not isinstance(text, str):
            raise InferenceError("ERR_INVALID_INPUT", "prompt must be a string")
        if len(text) > self.max_chars * self.spec.parallel:
            raise InferenceError("ERR_INVALID_INPUT",
                                 f"the text is {len(text)} characters: longer than model "
                                 f"'{self.model_id}' could ever read")
        return self.session.tokenize(text, add_special)

    def detokenize(self, tokens: Any) -> str:
        if not isinstance(tokens, list) or len(tokens) > self.cells * self.spec.parallel:
            raise InferenceError("ERR_INVALID_INPUT", "tokens must be a list of at most "
                                 f"{self.cells * self.spec.parallel} token ids")
        return self.session.detokenize(tokens)

    def tokenizer_info(self) -> dict[str, Any]:
        return {"bos_token": self.session.bos_text, "eos_token": self.eos_text,
                "pad_token": self.eos_text, "chat_template": self.formatter.template,
                "model_max_length": self.cells, "tokenizer_class": "llama.cpp"}


_OPTION_NAMES = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                 "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty", "seed",
                 "stop", "logprobs", "top_logprobs", "n", "response_format", "logit_bias",
                 "tools", "tool_choice", "parallel_tool_calls", "echo", "prompt_lookup"}


def _regex(text: str) -> str:
    """``text`` as an ECMAScript regex (llama.cpp's std::regex) matching it literally."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}" else c for c in text)


@dataclass
class _Choice:
    calls: CallStream
    count: int = 0  # calls begun
    open: tuple[int, str] | None = None  # (index, id) of the call being streamed


class Shaper:
    """One request's generated text turned into the events clients get: text, and with
    tools, the calls told apart from it (``chat.calls``), numbered per choice, each with
    an id; a choice that called a tool finishes with ``tool_calls``."""

    def __init__(self, request: GenerationRequest, fmt: Any) -> None:
        tools = request.tools
        self._stops = set(request.asked_stops)
        self._choices: dict[int, _Choice] = {}
        if tools is None:
            self._make = None
        else:  # a grammar writes the calls unless the format's are only parsed
            constrained = fmt.plan(tools, request.constraint)[1] is not None
            self._make = lambda: _Choice(CallStream(
                fmt, tools, whole=tools.forced or fmt.whole_json, constrained=constrained))

    def _choice(self, index: int) -> _Choice | None:
        if self._make is None:
            return None
        if index not in self._choices:
            self._choices[index] = self._make()
        return self._choices[index]

    def delta(self, index: int, text: str, logprob: Any) -> list[dict[str, Any]]:
        choice = self._choice(index)
        if choice is None:
            return [{"type": "delta", "index": index, "text": text, "logprob": logprob}]
        return self._events(index, choice, choice.calls.feed(text), logprob)

    def finish(self, index: int, reason: str, stop: str | None = None
               ) -> list[dict[str, Any]]:
        """The choice's last events; ``stop``: the stop string that ended it, if one did
        and the request asked for it (the end-of-turn text is not reported)."""
        choice = self._choice(index)
        events = [] if choice is None else self._events(index, choice, choice.calls.close(),
                                                        None)
        if choice is not None and choice.count and reason == "stop":
            reason = "tool_calls"
        finish = {"type": "finish", "index": index, "finishReason": reason}
        if stop is not None and stop in self._stops:
            finish["stopSequence"] = stop
        return [*events, finish]

    @staticmethod
    def _start(index: int, choice: _Choice, name: str) -> dict[str, Any]:
        """A call begins: its index, id and name, before its arguments."""
        choice.open = (choice.count, call_id())
        choice.count += 1
        return {"type": "toolCallStart", "index": index, "call": {
            "index": choice.open[0], "id": choice.open[1], "name": name}}

    @staticmethod
    def _piece(index: int, choice: _Choice, piece: str) -> dict[str, Any]:
        """The next piece of the open call's arguments."""
        assert choice.open is not None
        return {"type": "toolCallArguments", "index": index, "call": {
            "index": choice.open[0], "arguments": piece}}

    def _events(self, index: int, choice: _Choice, items: list[tuple[str, object]],
                logprob: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for kind, value in items:
            if kind == "text":
                events.append({"type": "delta", "index": index, "text": value,
                               "logprob": logprob})
                logprob = None
            elif kind == "open":
                events.append(self._start(index, choice, str(value)))
            elif kind == "arguments":
                events.append(self._piece(index, choice, str(value)))
            else:  # the whole call: announced and sent in one piece, unless it streamed
                assert isinstance(value, Call)
                if choice.open is None:
                    events += [self._start(index, choice, value.name),
                               self._piece(index, choice, value.arguments)]
                assert choice.open is not None
                (number, ident), choice.open = choice.open, None
                events.append({"type": "toolCall", "index": index, "call": {
                    "index": number, "id": ident, "name": value.name,
                    "arguments": value.arguments}})
        if logprob is not None:
            events.append({"type": "delta", "index": index, "text": "", "logprob": logprob})
        return events


@dataclass
class _Collected:
    """One choice's events, gathered."""

    texts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    stop_string: str | None = None
    prompt_logprobs: list[dict[str, Any]] = field(default_factory=list)  # echo


class Collector:
    """A generation's events gathered into one answer (non-streaming requests)."""

    def __init__(self) -> None:
        self.inference_id = ""
        self.chat = False
        self.answers: list[_Collected] = []
        self.want_logprobs = False
        self.usage: dict[str, int] = {}

    def add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            self.inference_id, self.chat = event["inferenceId"], event["chat"]
            self.answers = [_Collected() for _ in range(event["n"])]
            return
        if kind == "end":
            self.usage = event["usage"]
            for answer in self.answers:
                answer.reason = answer.reason or event["finishReason"] or "stop"
            return
        answer = self.answers[event["index"]]
        if kind == "promptLogprobs":
            answer.prompt_logprobs += event["entries"]
        elif kind == "toolCall":
            call = event["call"]
            answer.calls.append({"id": call["id"], "type": "function", "function": {
                "name": call["name"], "arguments": call["arguments"]}})
        elif kind == "delta":
            answer.texts.append(event["text"])
            if event["logprob"] is not None:
                self.want_logprobs = True
                answer.logprobs.append(event["logprob"])
        elif kind == "finish":
            answer.reason = event["finishReason"]
            answer.stop_string = event.get("stopSequence")

    def choices(self) -> list[dict[str, Any]]:
        out = []
        for i, answer in enumerate(self.answers):
            choice: dict[str, Any] = {"index": i, "text": "".join(answer.texts),
                                      "finishReason": answer.reason}
            if answer.calls:
                choice["toolCalls"] = answer.calls
            if answer.stop_string is not None:
                choice["stopSequence"] = answer.stop_string
            if answer.prompt_logprobs:  # echo: the prompt's text and its scored tokens
                choice["prompt"] = "".join(e["token"] for e in answer.prompt_logprobs)
                choice["promptLogprobs"] = answer.prompt_logprobs
            if self.want_logprobs:
                choice["logprobs"] = answer.logprobs
            out.append(choice)
        return out

    def result(self) -> dict[str, Any]:
        """The seed API's and RPC's answer: the first choice's text (and message, for a
        chat, in OpenAI's shape: its ``tool_calls`` can go back into the conversation as
        they are), its finish reason, usage, and every choice."""
        choices = self.choices()
        result: dict[str, Any] = {"text": choices[0]["text"],
                                  "finishReason": choices[0]["finishReason"],
                                  "usage": self.usage, "choices": choices}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": choices[0]["text"]}
            if choices[0].get("toolCalls"):
                message["tool_calls"] = choices[0]["toolCalls"]
                result["toolCalls"] = choices[0]["toolCalls"]
            result["message"] = message
        return result
