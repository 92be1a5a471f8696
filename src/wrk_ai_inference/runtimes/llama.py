"""GGUF language models on llama.cpp (llama-cpp-python), one inference thread per model.

A ``Llama`` object is not thread-safe: two unlocked calls at once crash the
process, and a ``threading.Lock`` hands it to threads unfairly (some starve).
So each loaded model owns one thread that takes generations from a FIFO, one at
a time, in arrival order; the event loop never touches a llama object, not even
to tokenise. Events (prompt size, text deltas, the end) come back through a
thread-safe callback.

A generation stops where it is when its ``stop_reason`` is set (cancel, deadline,
a client gone): between tokens, and during prompt processing through llama.cpp's
abort callback, which makes ``llama_decode`` return early. The ctypes callback is
kept referenced by the session: a collected one is a dangling pointer.
"""

from __future__ import annotations

import codecs
import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InferenceError, first_line
from ..logs import get_logger
from .base import ModelSession, RunHandle, Tensors

if TYPE_CHECKING:
    from ..models.spec import ModelSpec

log = get_logger("llama")


@dataclass
class Sampling:
    """Sampling settings of one generation (llama-cpp-python's names and defaults)."""

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: and the k best
    grammar: str | None = None  # GBNF
    n: int = 1


@dataclass
class Generation:
    """One request as the model's thread sees it. ``stop_reason`` is the only field the
    event loop writes once the generation is queued."""

    prompt: str
    add_bos: bool
    sampling: Sampling
    emit: Callable[[tuple[Any, ...]], None]
    request_id: str = "-"
    stop_reason: str | None = None
    stop_asked: float = 0.0  # perf_counter() when the stop was asked for

    def stop(self, reason: str) -> None:
        """Ask the thread to stop this generation (from the event loop); the first reason
        given is the one reported."""
        if self.stop_reason is None:
            self.stop_asked = time.perf_counter()
            self.stop_reason = reason


class LlamaSession(ModelSession):
    """A loaded GGUF model and its inference thread."""

    def __init__(self, llm: Any, spec: ModelSpec, model: str) -> None:
        import llama_cpp

        from ..models.spec import TensorSpec

        self.llm = llm
        self.model = model
        self.n_ctx = int(llm.n_ctx())
        self.inputs = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
        self.outputs = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
        self._lib = llama_cpp
        self._vocab = llm._model.vocab
        self._n_vocab = int(llm.n_vocab())
        self.chat_template: str | None = llm.metadata.get("tokenizer.chat_template")
        self.bos_text = self._special_text(llm.token_bos())
        self.eos_text = self._special_text(llm.token_eos())
        self._jobs: queue.SimpleQueue[Generation | None] = queue.SimpleQueue()
        self._current: Generation | None = None
        self.waiting = 0  # generations queued for the thread (read by capacity reports)
        self.running = 0
        # referenced for the session's life: llama.cpp keeps the raw pointer
        self._abort = llama_cpp.ggml_abort_callback(self._should_abort)
        llama_cpp.llama_set_abort_callback(llm._ctx.ctx, self._abort, None)
        self._thread = threading.Thread(target=self._serve, name=f"llama-{model}", daemon=True)
        self._thread.start()

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        text: bytes = self.llm._model.token_get_text(token)
        return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)

    # ---- the engine's side --------------------------------------------------------
    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"model '{self.model}' generates text: send a prompt or messages")

    def submit(self, job: Generation) -> None:
        """Queue a generation (from the event loop); it runs after those queued before."""
        self.waiting += 1
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)

    # ---- the thread ----------------------------------------------------------------
    def _should_abort(self, _data: Any) -> bool:
        job = self._current
        return job is not None and job.stop_reason is not None

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            self.waiting -= 1
            self.running += 1
            self._current = job
            try:
                if job.stop_reason is not None:
                    job.emit(("end", job.stop_reason, 0))
                else:
                    self._generate(job)
            except InferenceError as exc:
                job.emit(("error", exc))
            except Exception as exc:
                if job.stop_reason is not None:  # llama_decode aborted by the callback
                    job.emit(("end", job.stop_reason, 0))
                else:
                    log.exception("generation failed", extra={"modelId": self.model})
                    job.emit(("error", InferenceError(
                        "ERR_INFERENCE_FAILED", f"the runtime failed: {first_line(exc)}")))
            finally:
                self._current = None
                self.running -= 1
                if job.stop_reason is not None:
                    log.info("generation stopped", extra={
                        "modelId": self.model, "requestId": job.request_id,
                        "reason": job.stop_reason,
                        "stopMs": round((time.perf_counter() - job.stop_asked) * 1000, 2)})
        self.llm.close()  # the callback stays referenced by the session, past the context

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        tokens: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos,
                                              special=True)
        return tokens

    def _generate(self, job: Generation) -> None:
        llm, s = self.llm, job.sampling
        tokens = self.tokenize(job.prompt, job.add_bos)
        if not tokens:
            raise InferenceError("ERR_INVALID_INPUT", "the prompt is empty")
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise InferenceError(
                "ERR_INVALID_INPUT",
                f"the prompt is {len(tokens)} tokens; model '{self.model}' has a context of "
                f"{self.n_ctx} tokens (prompt and answer together)",
                {"promptTokens": len(tokens), "contextLength": self.n_ctx})
        limit = room if s.max_tokens is None else min(s.max_tokens, room)
        job.emit(("prompt", len(tokens)))
        total = 0
        for choice in range(s.n):
            if job.stop_reason is not None:
                job.emit(("finish", choice, job.stop_reason, 0))
                continue
            seed = (s.seed + choice) if s.seed is not None else random.getrandbits(31)
            llm.set_seed(seed)
            made, reason = self._one_choice(job, choice, tokens, limit)
            total += made
            job.emit(("finish", choice, reason, made))
        job.emit(("end", job.stop_reason, total))

    def _one_choice(self, job: Generation, choice: int, prompt: list[int], limit: int
                    ) -> tuple[int, str]:
        """Generate one choice; returns (tokens generated, finish reason)."""
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        llm, s = self.llm, job.sampling
        grammar = (LlamaGrammar.from_string(s.grammar, verbose=False)
                   if s.grammar is not None else None)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopFilter(s.stop)
        made: list[int] = []
        reason = "length"
        tokens = llm.generate(prompt, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                              temp=s.temperature, repeat_penalty=s.repeat_penalty,
                              frequency_penalty=s.frequency_penalty,
                              presence_penalty=s.presence_penalty, grammar=grammar)
        try:
            for token in tokens:
                if job.stop_reason is not None:
                    reason = job.stop_reason
                    break
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                logprob = self._logprob(token, s.logprobs) if s.logprobs is not None else None
                piece = llm.detokenize([token], prev_tokens=prompt + made)
                made.append(token)
                text, stopped = stops.feed(decoder.decode(piece))
                if text or logprob is not None:
                    job.emit(("delta", choice, text, logprob))
                if stopped:
                    reason = "stop"
                    break
                if len(made) >= limit:
                    break
        except RuntimeError:
            if job.stop_reason is None:
                raise
            reason = job.stop_reason  # llama_decode aborted by the callback: stopped
        finally:
            tokens.close()
        if reason != "stop" or not stops.stopped:
            rest = stops.flush(decoder.decode(b"", final=True))
            if rest:
                job.emit(("delta", choice, rest, None))
        return len(made), reason

    def _logprob(self, token: int, top: int) -> dict[str, Any]:
        """The chosen token's log-probability (and the ``top`` best) from the logits of
        the position just decoded: llama.cpp keeps those without ``logits_all``."""
        pointer = self._lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).astype(np.float64)
        peak = logits.max()
        log_norm = peak + math.log(float(np.exp(logits - peak).sum()))
        entry: dict[str, Any] = {"token": self._piece(token),
                                 "logprob": float(logits[token] - log_norm)}
        if top:
            best = np.argpartition(-logits, top)[:top]
            best = best[np.argsort(-logits[best], kind="stable")]
            entry["top"] = [(self._piece(int(i)), float(logits[i] - log_norm)) for i in best]
        return entry

    def _piece(self, token: int) -> str:
        raw: bytes = self.llm.detokenize([token])
        return raw.decode("utf-8", errors="replace")


class StopFilter:
    """Cuts the text at the first stop string, which is never emitted, even when it
    arrives split across tokens: text that could begin a stop string is held back until
    the next piece decides."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return text[:cut], True
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:size]):
                    keep = size
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self, piece: str) -> str:
        text, stopped = self.feed(piece)
        if stopped:
            return text
        text, self.held = text + self.held, ""
        return text


class LlamaRuntime:
    """Loads GGUF files with the threads and context model.json gives."""

    name = "llama"

    def load(self, artifact: Path, spec: ModelSpec, model: str) -> ModelSession:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model}': GGUF models need llama-cpp-python (pip install "
                "'wrk-ai-inference[llm]')") from exc
        # set explicitly: llama.cpp's default counts the machine's cores, not the quota
        threads = spec.threads or len(os.sched_getaffinity(0))
        try:
            llm = Llama(str(artifact), n_ctx=spec.context_length, n_threads=threads,
                        n_threads_batch=threads, n_batch=min(512, spec.context_length),
                        seed=0, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model}': llama.cpp cannot load {spec.file}: "
                                 f"{first_line(exc)}") from exc
        return LlamaSession(llm, spec, model)
