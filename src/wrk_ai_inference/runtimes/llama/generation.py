"""What one request asks of a language model, as the model's thread sees it.

The event loop builds a ``Generation`` and hands it over; from then on it writes only
``stop_reason`` (cancel, deadline, a client gone), and the thread reports back through
``deliver``, a list of events at a time: ("prompt", tokens), ("delta", choice, text,
logprob), ("finish", choice, reason, tokens, stop string or None), ("end", reason, tokens)
or ("error",
InferenceError).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import InferenceError
from .prefix import PrefixHashes


@dataclass(frozen=True)
class Grammar:
    """GBNF the output must follow; with ``patterns`` (regexes over the text made so far)
    or ``tokens`` it is lazy: free until one of them appears, then in force from there
    (llama.cpp's lazy grammar, which tool calls in free text use)."""

    text: str
    patterns: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def lazy(self) -> bool:
        return bool(self.patterns or self.tokens)


@dataclass
class Sampling:
    """Sampling settings of one generation (llama-cpp-python's names and defaults)."""

    max_tokens: int | None = None  # asked for: refused when prompt and answer cannot fit
    default_max_tokens: int | None = None  # model.json's: a cap, never a reason to refuse
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
    grammar: Grammar | None = None
    n: int = 1
    #: the prompt's tokens come back with their log-probabilities (``logprobs`` of them)
    echo: bool = False
    logit_bias: list[tuple[int, float]] = field(default_factory=list)  # (token, bias)
    #: most tokens drafted by prompt lookup per step (greedy only); None: the model's own
    prompt_lookup: int | None = None


@dataclass
class Generation:
    """One request: its prompt, its settings, where its events go, and (kept by the
    scheduler) how far its choices have come."""

    tokens: list[int]  # the prompt, tokenised before it reaches the model's thread
    sampling: Sampling
    deliver: Callable[[list[tuple[Any, ...]]], None]
    request_id: str = "-"
    stop_reason: str | None = None
    stop_asked: float = 0.0  # perf_counter() when the stop was asked for
    # the scheduler's bookkeeping, on the model's thread only
    order: int = 0  # arrival rank
    admitted: int = 0  # choices given a sequence slot so far
    live: int = 0  # choices generating now
    made: int = 0  # tokens generated over all its choices
    outbox: list[tuple[Any, ...]] = field(default_factory=list)  # events not yet delivered
    hashes: PrefixHashes | None = None  # the prompt's block hashes, made when first asked

    def start_with(self, tokens: list[int], grammar: Grammar | None) -> None:
        """The prompt and grammar made off the loop, before the model's thread sees it."""
        self.tokens = tokens
        self.sampling.grammar = grammar

    def prompt_hashes(self) -> PrefixHashes:
        if self.hashes is None:
            self.hashes = PrefixHashes().update(self.tokens)
        return self.hashes

    def stop(self, reason: str) -> None:
        """Ask the thread to stop this generation (from the event loop); the first reason
        given is the one reported."""
        if self.stop_reason is None:
            self.stop_asked = time.perf_counter()
            self.stop_reason = reason


def check_fits(prompt: int, max_tokens: int | None, cells: int, model: str) -> None:
    """Refuse a prompt of ``prompt`` tokens that, with the answer asked for, cannot fit a
    sequence of ``cells`` cells."""
    if not prompt:
        raise InferenceError("ERR_INVALID_INPUT", "the prompt is empty")
    if prompt >= cells or (max_tokens is not None and prompt + max_tokens > cells):
        asked = f" and max_tokens {max_tokens}" if max_tokens is not None else ""
        raise InferenceError(
            "ERR_INVALID_INPUT",
            f"the prompt is {prompt} tokens{asked}; model '{model}' has a context "
            f"of {cells} tokens per sequence (prompt and answer together)",
            {"promptTokens": prompt, "maxTokens": max_tokens, "contextLength": cells})


def partial_suffix(text: str, markers: list[str]) -> int:
    """How many of ``text``'s last characters could begin one of ``markers``: what must be
    held back until the next piece decides."""
    keep = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), keep, -1):
            if text.endswith(marker[:size]):
                keep = size
                break
    return keep


class StopFilter:
    """Cuts the text at the first stop string, which is never emitted, even when it
    arrives split across tokens: text that could begin a stop string is held back until
    the next piece decides."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        text = self.held + piece
        found = [(i, s) for i, s in ((text.find(s), s) for s in self.stops) if i >= 0]
        if found:
            cut, self.matched = min(found, key=lambda f: f[0])
            self.held, self.stopped = "", True
            return text[:cut], True
        keep = partial_suffix(text, self.stops)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self, piece: str) -> str:
        text, stopped = self.feed(piece)
        if stopped:
            return text
        text, self.held = text + self.held, ""
        return text
