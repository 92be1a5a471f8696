"""One choice of one generation while it holds a sequence slot of the shared context.

Each sequence samples with a sampler chain of its own (penalties, then greedy
or top-k / typical / top-p / min-p / temperature / seeded draw: llama-cpp-python's
order, so a request samples as it would there; a grammar checks the drawn token after,
as llama-server does), decodes its pieces to text through an
incremental UTF-8 decoder and cuts its stop strings, independently of the sequences
decoded beside it. Plain greedy decoding (no penalty, no grammar) skips the chain and
reads the best token off the logits (``GreedyPick``): the same token, without building
a candidate entry for every token of the vocabulary per step.
"""

from __future__ import annotations

import codecs
import ctypes
import random
from typing import Any

import numpy as np

from ...errors import InferenceError
from .generation import Generation, Grammar, Sampling, StopFilter
from .lookup import PromptLookup
from .prefix import BLOCK, PrefixHashes
from .vocabulary import Vocabulary

PENALTY_WINDOW = 64  # tokens the repetition penalties look back over (llama-cpp-python's)


def sampler_chain(lib: Any, n_vocab: int, job: Generation, seed: int) -> Any:
    """A llama.cpp sampler chain for ``job``'s settings, without its grammar (a raw
    pointer: free it with ``llama_sampler_free``)."""
    s = job.sampling
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    links = []
    if s.logit_bias:  # first, as llama-server's chain has it
        biases = (lib.llama_logit_bias * len(s.logit_bias))(
            *(lib.llama_logit_bias(token, bias) for token, bias in s.logit_bias))
        links.append(lib.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), biases))
    links.append(lib.llama_sampler_init_penalties(n_vocab, PENALTY_WINDOW, s.repeat_penalty,
                                                  s.frequency_penalty, s.presence_penalty))
    if s.temperature == 0:
        links.append(lib.llama_sampler_init_greedy())
    else:
        links += [lib.llama_sampler_init_top_k(s.top_k), lib.llama_sampler_init_typical(1.0, 1),
                  lib.llama_sampler_init_top_p(s.top_p, 1),
                  lib.llama_sampler_init_min_p(s.min_p, 1),
                  lib.llama_sampler_init_temp(s.temperature),
                  lib.llama_sampler_init_dist(seed)]
    for link in links:
        lib.llama_sampler_chain_add(chain, link)
    return chain


def plain_greedy(sampling: Sampling) -> bool:
    """Whether the chain for ``sampling`` is logit bias, penalties that change nothing and
    greedy: what ``GreedyPick`` picks exactly. A token biased twice (``"17"`` and
    ``"017"``) keeps the chain, which adds the two biases one after the other."""
    tokens = [token for token, _ in sampling.logit_bias]
    return (sampling.temperature == 0 and sampling.grammar is None
            and sampling.repeat_penalty == 1.0 and sampling.frequency_penalty == 0.0
            and sampling.presence_penalty == 0.0 and len(set(tokens)) == len(tokens))


class GreedyPick:
    """Greedy decoding read straight off a row of logits. llama.cpp's chain first copies
    the whole row into a candidate entry per token of the vocabulary, then takes the best:
    on the model's thread, between two decodes, per sequence and step, and for a large
    vocabulary (Gemma 3 has 262,144 tokens) many times the cost of numpy's argmax over
    the row (``docs/performance.md``). The pick is the chain's: the biases added in
    float32, then the first best in token order."""

    def __init__(self, vocab: Vocabulary, logit_bias: list[tuple[int, float]]) -> None:
        ordered = sorted(logit_bias)
        self._vocab = vocab
        self._ids = np.array([token for token, _ in ordered], dtype=np.intp)
        self._bias = np.array([bias for _, bias in ordered], dtype=np.float32)
        self._biased = {token for token, _ in ordered}

    def pick(self, logits: Any) -> int:
        row = self._vocab.row(logits)
        best = int(row.argmax())
        if not self._biased:
            return best
        rest = row
        if best in self._biased:  # the best unbiased token takes a pass without them
            rest = row.copy()
            rest[self._ids] = -np.inf
            best = int(rest.argmax())
        shifted = row[self._ids] + self._bias
        j = int(shifted.argmax())  # the first best of the biased (their ids are sorted)
        if shifted[j] > rest[best] or (shifted[j] == rest[best] and self._ids[j] < best):
            return int(self._ids[j])
        return best


class GrammarCheck:
    """A sequence's grammar, applied as llama.cpp's own server applies it: the chain picks a
    token from the free logits, the grammar checks that one token, and only when it
    refuses are all the logits masked and the token drawn again. Masking the whole
    vocabulary every step would halve the speed of a constrained answer; a model that
    follows its grammar (most steps of a tool call) pays one check per token."""

    def __init__(self, lib: Any, vocab: Vocabulary, grammar: Grammar) -> None:
        self._lib, self._vocab, self._n_vocab = lib, vocab, vocab.size
        self.sampler = _grammar(lib, vocab.ptr, grammar)
        if not self.sampler:
            raise InferenceError("ERR_INVALID_INPUT", "the grammar cannot be parsed")
        self._one = lib.llama_token_data()
        self._check = lib.llama_token_data_array(
            ctypes.cast(ctypes.pointer(self._one), lib.llama_token_data_p), 1, -1, False)
        self._all: Any = None  # every candidate, made on the first refusal

    def sample(self, chain: Any, ctx: Any, index: int) -> int:
        lib = self._lib
        token: int = lib.llama_sampler_sample(chain, ctx, index)
        self._one.id, self._one.logit, self._one.p = token, 0.0, 0.0
        self._check.selected = -1
        lib.llama_sampler_apply(self.sampler, ctypes.byref(self._check))
        if self._one.logit != float("-inf"):
            lib.llama_sampler_accept(self.sampler, token)
            return token
        # refused: mask every candidate and draw again (the refused token stays in the
        # chain's penalty window: it was accepted by the first draw)
        if self._all is None:
            self._all = np.zeros(self._n_vocab, dtype=[("id", np.int32), ("logit", np.float32),
                                                       ("p", np.float32)])
        candidates = self._all
        candidates["id"] = np.arange(self._n_vocab, dtype=np.int32)
        logits = lib.llama_get_logits_ith(ctx, index)
        candidates["logit"] = self._vocab.row(logits)
        candidates["p"] = 0.0
        array = lib.llama_token_data_array(
            candidates.ctypes.data_as(lib.llama_token_data_p), self._n_vocab, -1, False)
        lib.llama_sampler_apply(self.sampler, ctypes.byref(array))
        lib.llama_sampler_apply(chain, ctypes.byref(array))
        token = int(candidates["id"][array.selected])
        lib.llama_sampler_accept(self.sampler, token)
        lib.llama_sampler_accept(chain, token)
        return token

    def close(self) -> None:
        if self.sampler:
            self._lib.llama_sampler_free(self.sampler)
            self.sampler = None


def _grammar(lib: Any, vocab: Any, grammar: Grammar) -> Any:
    text = grammar.text.encode("utf-8")
    if not grammar.lazy:
        return lib.llama_sampler_init_grammar(vocab, text, b"root")
    patterns = (ctypes.c_char_p * max(1, len(grammar.patterns)))(
        *(p.encode("utf-8") for p in grammar.patterns))
    tokens = (lib.llama_token * max(1, len(grammar.tokens)))(*grammar.tokens)
    return lib.llama_sampler_init_grammar_lazy_patterns(
        vocab, text, b"root", patterns, len(grammar.patterns), tokens, len(grammar.tokens))


class Sequence:
    """A choice being generated in slot ``slot``: the prompt tokens it still has to
    evaluate, the tokens its KV cells hold (their count is its next position), the last
    token it sampled (the next one to decode)."""

    def __init__(self, lib: Any, vocab: Vocabulary, job: Generation, choice: int,
                 slot: int, limit: int) -> None:
        s = job.sampling
        self.job, self.choice, self.slot, self.limit = job, choice, slot, limit
        seed = (s.seed + choice) if s.seed is not None else random.getrandbits(31)
        self.sampler = sampler_chain(lib, vocab.size, job, seed)
        try:
            self.grammar = (GrammarCheck(lib, vocab, s.grammar)
                            if s.grammar is not None else None)
        except InferenceError:
            lib.llama_sampler_free(self.sampler)
            raise
        self._greedy = GreedyPick(vocab, s.logit_bias) if plain_greedy(s) else None
        self._lib, self._vocab = lib, vocab
        self.pending: list[int] = []  # prompt tokens not yet in the KV cache
        self.kv: list[int] = []  # the tokens in its KV cells, in order (for prefix reuse)
        self.hashes = PrefixHashes()  # of ``kv``'s whole blocks, brought up to date on use
        self.lookup: PromptLookup | None = None  # drafts for speculative decoding
        self.drafts: list[int] = []  # this step's draft, after ``last`` in the batch
        self.source: Sequence | None = None  # a sequence whose reading it will copy
        self.share = 0  # how many of the source's first cells it copies
        self.last = -1  # the token sampled last, decoded at the next step
        self.index = -1  # where this step's batch puts the logits it samples from
        #: (batch index, the prompt token its logits score) of this step (echo)
        self.scoring: list[tuple[int, int]] = []
        self.scored = False  # the prompt's first token has been reported
        self.made = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopFilter(s.stop)

    def trim(self, keep: int) -> None:
        """Only the first ``keep`` of its cells stay (a refused draft's go)."""
        if keep < len(self.kv):
            del self.kv[keep:]
            if len(self.hashes.hashes) * BLOCK > keep:
                self.hashes = PrefixHashes()

    def holds(self, tokens: list[int]) -> None:
        """Its cells now hold ``tokens`` (a reused prefix, a sibling's prompt)."""
        self.kv = tokens
        self.hashes = PrefixHashes()

    def close(self) -> None:
        if self.sampler:
            self._lib.llama_sampler_free(self.sampler)
            self.sampler = None
        if self.grammar is not None:
            self.grammar.close()

    def sample(self, ctx: Any) -> int:
        """Draw the next token from the logits at ``index`` (the chain also feeds it to
        its penalties; the grammar, where there is one, checks it); plain greedy takes
        the best off the row."""
        if self.grammar is not None:
            return self.grammar.sample(self.sampler, ctx, self.index)
        if self._greedy is not None:
            return self._greedy.pick(self._lib.llama_get_logits_ith(ctx, self.index))
        token: int = self._lib.llama_sampler_sample(self.sampler, ctx, self.index)
        return token

    def text(self, token: int) -> tuple[str, bool]:
        """The text ``token`` adds that is safe to emit, and whether a stop string ended
        the choice."""
        return self._stops.feed(self._decoder.decode(self._vocab.piece(token)))

    def piece(self, token: int) -> str:
        """One token's text on its own (for logprobs)."""
        return self._vocab.piece(token).decode("utf-8", errors="replace")

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the choice, if one did."""
        return self._stops.matched

    def rest(self, reason: str) -> str:
        """Text still held back when the choice ends (none after a stop string)."""
        if reason == "stop" and self._stops.stopped:
            return ""
        return self._stops.flush(self._decoder.decode(b"", final=True))
