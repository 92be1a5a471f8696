"""Continuous batching: every running sequence of a model advances in one ``llama_decode``.

The model's thread loops over steps. A step takes new generations from the FIFO, gives
free sequence slots to the oldest waiting choices, stops the sequences whose request
ended (cancel, deadline, disconnect), then builds one batch: the last sampled token of
every decoding sequence, plus prompt tokens of the sequences still reading their
prompt, up to a budget per step, so a long prompt is read in chunks while the other
streams keep flowing. After the decode each sequence whose logits came back samples
with its own chain and emits its text; one that ends frees its slot for the next
waiting choice at the next step, whatever the others are doing.

The KV cache is not unified: each slot is a stream of its own, ``contextLength`` cells
long, so a sequence attends only to its own cells. llama.cpp splits a batch into
micro-batches of *consecutive* sequence ids, so running sequences are kept in the
lowest slots: when one ends, the one in the highest slot moves down into the gap (a
copy of its stream). ``n`` choices read their prompt once: the others copy its cells
and re-read only its last token. An idle slot keeps its cells; a new prompt that
begins the same way starts where that cache ends.
"""

from __future__ import annotations

import math
import queue
import time
from collections import deque
from typing import Any

import numpy as np

from ...errors import InferenceError, first_line
from ...logs import get_logger
from .generation import Generation, check_fits
from .lookup import PromptLookup
from .prefix import BLOCK, PrefixHashes, shared_prefix, verified
from .sequence import Sequence
from .vocabulary import Vocabulary

log = get_logger("llama")


#: prompt tokens a step may read when one generation reads and nothing decodes: nobody
#: waits on the step, and its abort callback stops it at a deadline (llama.cpp's own
#: default micro-batch). Not for a scored prompt (``echo``): each of its tokens takes a
#: row of logits, and a vocabulary of 262,144 makes 512 rows half a gigabyte.
LONE_CHUNK = 512


def batch_size(chunk: int, parallel: int, drafts: int) -> int:
    """Tokens one step may decode: a prompt chunk, and each sequence's last token with its
    draft; or a lone prompt's larger chunk."""
    return max(chunk + parallel * (1 + drafts), LONE_CHUNK)


def _all_stopped(jobs: list[Generation]) -> bool:
    """Whether every generation of a step has been asked to stop: only then may the step
    end inside ``llama_decode`` (the others' tokens would be lost)."""
    return all(job.stop_reason is not None for job in jobs)


class Scheduler:
    """The model's thread: owns the llama context, its batch and its sequences."""

    def __init__(self, lib: Any, llm: Any, ctx: Any, vocab: Vocabulary, parallel: int,
                 cells: int, chunk: int, model: str, prompt_cache: bool = True,
                 drafts: int = 0) -> None:
        self._lib, self._llm, self._ctx, self.model = lib, llm, ctx, model
        self._vocab = vocab  # its caches are this thread's alone
        self._mem = lib.llama_get_memory(ctx)
        self._swa = int(lib.llama_model_n_swa(llm._model.model))
        self.parallel, self.cells, self.chunk = parallel, cells, chunk
        self.drafts = drafts  # most tokens a sequence may draft per step (prompt lookup)
        self._batch_tokens = batch_size(chunk, parallel, drafts)  # tokens the batch holds
        self._batch = lib.llama_batch_init(self._batch_tokens, 0, 1)
        self.jobs: queue.SimpleQueue[Generation | None] = queue.SimpleQueue()
        self._waiting: deque[Generation] = deque()
        self.slots: list[Sequence | None] = [None] * parallel
        self.prompt_cache = prompt_cache  # reuse cells that hold a prompt's beginning
        #: what idle slots' cells hold, and its block hashes
        self._cached: list[tuple[list[int], PrefixHashes]] = [([], PrefixHashes())
                                                              for _ in range(parallel)]
        self.taken = 0  # generations taken off the FIFO and given all their slots
        self.running = 0  # sequences holding a slot
        self._order = 0  # arrival count: the oldest reader reads first
        self._armed: list[Generation] = []  # whose stop, all of them, aborts the decode
        self._posting: list[Generation] = []  # generations with events not yet delivered
        # referenced while the context lives: llama.cpp keeps the raw pointer
        self._abort = lib.ggml_abort_callback(self._should_abort)
        self._no_abort = lib.ggml_abort_callback()  # a NULL function pointer

    # ---- the loop -------------------------------------------------------------------
    def serve(self) -> None:
        try:
            while self._take():
                try:
                    self._admit()
                    if self.running:
                        self._step()
                except Exception as exc:  # a bug must not strand the other generations
                    log.exception("generation step failed", extra={"modelId": self.model})
                    self._fail(self._live(), InferenceError(
                        "ERR_INFERENCE_FAILED", f"the runtime failed: {first_line(exc)}"))
                self._flush()
        finally:
            self._shut()

    def _take(self) -> bool:
        """Move new generations from the FIFO; block while there is nothing to do.
        False once the session closes."""
        block = not self.running and not self._waiting
        while block or not self.jobs.empty():  # this thread alone takes from it
            job = self.jobs.get()
            if job is None:
                return False
            self._queue(job)
            block = False
        return True

    def _queue(self, job: Generation) -> None:
        """Size-check a new generation (its prompt came tokenised: the tokenizer never
        runs on this thread); a refusal answers it at once."""
        try:
            check_fits(len(job.tokens), job.sampling.max_tokens, self.cells, self.model)
        except InferenceError as exc:
            self.taken += 1
            self._emit(job, ("error", exc))
            return
        self._emit(job, ("prompt", len(job.tokens)))
        self._order += 1
        job.order = self._order
        self._waiting.append(job)

    def _admit(self) -> None:
        """Give free slots to waiting choices, oldest generation first."""
        while self._waiting:
            job = self._waiting[0]
            if job.stop_reason is not None:
                self._waiting.popleft()
                self.taken += 1
                for choice in range(job.admitted, job.sampling.n):
                    self._emit(job, ("finish", choice, job.stop_reason, 0, None))
                job.admitted = job.sampling.n
                self._maybe_end(job)
                continue
            if self.running == self.parallel:
                return
            try:
                self._start(job)
            except InferenceError as exc:
                self._waiting.popleft()
                self.taken += 1
                job.stop(exc.code)
                if job.live:
                    job.admitted = job.sampling.n
                else:
                    self._emit(job, ("error", exc))
                continue
            if job.admitted == job.sampling.n:
                self._waiting.popleft()
                self.taken += 1

    def _start(self, job: Generation) -> None:
        """Put the next choice of ``job`` in the lowest free slot."""
        slot = self.running
        prompt = job.tokens
        limit = self.cells - len(prompt)
        asked = (job.sampling.max_tokens if job.sampling.max_tokens is not None
                 else job.sampling.default_max_tokens)
        if asked is not None:
            limit = min(limit, asked)
        seq = Sequence(self._lib, self._vocab, job, job.admitted, slot, limit)
        sampling = job.sampling
        wanted = sampling.prompt_lookup
        most = min(self.drafts, self.drafts if wanted is None else wanted)
        if (most > 0 and sampling.temperature == 0 and sampling.grammar is None
                and not sampling.echo):
            # a draft is checked by equality: greedy only; a grammar checks one token at a
            # time, and a scored prompt is read whole
            seq.lookup = PromptLookup(prompt, most)
        sibling = next((s for s in self.slots
                        if s is not None and s.job is job and s.source is None), None)
        if sibling is not None:  # copies its prompt when it has been read
            seq.source, seq.share = sibling, len(prompt) - 1
        else:  # a scored prompt is read whole: cached cells have no logits to give
            self._reuse(seq, prompt, allowed=not job.sampling.echo)
        self.slots[slot] = seq
        self.running += 1
        job.admitted += 1
        job.live += 1

    def _reuse(self, seq: Sequence, prompt: list[int], allowed: bool = True) -> None:
        """Start ``seq`` where the longest cached beginning of its prompt ends: in an idle
        slot's cells, or in a running sequence's (a shared system prompt, few-shot
        examples, the same document asked again), copied into its slot. Where a running
        sequence is still reading a longer shared beginning (requests that arrived
        together), ``seq`` waits for it and copies that instead of reading it again."""
        best, match, held = seq.slot, 0, prompt
        if allowed and self.prompt_cache:
            want = seq.job.prompt_hashes()
            for slot, tokens, hashes in self._holders():
                n = shared_prefix(tokens, hashes, prompt, want)
                if n > match and self._reusable(slot):
                    best, match, held = slot, n, tokens
            if match:
                match = verified(held, prompt, match)
            reader, share = self._reader_of(seq, want, match)
            if reader is not None:
                seq.source, seq.share = reader, share
                return
        match = min(match, len(prompt) - 1)  # the last prompt token is read for its logits
        if match and best != seq.slot:
            self._copy(best, seq.slot)
        self._lib.llama_memory_seq_rm(self._mem, seq.slot, match if match else -1, -1)
        self._cached[seq.slot] = ([], PrefixHashes())
        seq.holds(prompt[:match])
        seq.pending = prompt[match:]
        if seq.choice == 0:
            self._emit(seq.job, ("cached", match))

    def _reader_of(self, seq: Sequence, want: PrefixHashes, have: int
                   ) -> tuple[Sequence | None, int]:
        """A running sequence still reading a prompt that shares more than a block beyond
        ``have`` with ``seq``'s, and how many tokens it shares (at most all but the last
        of ``seq``'s prompt)."""
        prompt, found, share = seq.job.tokens, None, have + BLOCK
        if self._swa > 0:  # its reader would read past what is shared before it is copied
            return None, 0
        for other in self.slots[:self.running]:
            if other is None or other.source is not None or not other.pending:
                continue
            tokens = other.job.tokens
            n = min(shared_prefix(tokens, other.job.prompt_hashes(), prompt, want),
                    len(prompt) - 1)
            if n > share and verified(tokens, prompt, n):
                found, share = other, n
        return found, share

    def _holders(self) -> list[tuple[int, list[int], PrefixHashes]]:
        """Every slot whose cells hold tokens from position 0, with those tokens and their
        block hashes brought up to date."""
        out = []
        for slot in range(self.parallel):
            seq = self.slots[slot]
            if seq is None:
                tokens, hashes = self._cached[slot]
            elif seq.source is None:
                tokens, hashes = seq.kv, seq.hashes
            else:
                continue
            if tokens:
                out.append((slot, tokens, hashes.update(tokens)))
        return out

    def _reusable(self, slot: int) -> bool:
        """Whether the slot still holds its cache from position 0 (a sliding-window cache
        forgets old positions)."""
        return bool(self._lib.llama_memory_seq_pos_min(self._mem, slot) <= 0)

    def _copy(self, src: int, dst: int) -> None:
        """Copy a whole stream (its cells and their positions); llama.cpp does it at the
        next decode."""
        self._lib.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    def _from_source(self, seq: Sequence) -> None:
        """A sequence waiting on another's reading (a sibling choice's whole prompt, or a
        beginning another request shares) copies it once it has been read."""
        source, prompt = seq.source, seq.job.tokens
        # gone, or a sliding-window cache that went on past what is shared (it no longer
        # holds the cells the window needs there): read it all itself
        if (source is None or self.slots[source.slot] is not source
                or (self._swa > 0 and len(source.kv) > seq.share + 1)):
            seq.source = None
            self._lib.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            seq.holds([])
            seq.pending = list(prompt)
            return
        if len(source.kv) < seq.share:
            return
        self._copy(source.slot, seq.slot)
        self._lib.llama_memory_seq_rm(self._mem, seq.slot, seq.share, -1)
        seq.holds(prompt[:seq.share])
        seq.pending = prompt[seq.share:]
        seq.source = None
        if seq.choice == 0:
            self._emit(seq.job, ("cached", seq.share))

    # ---- one step ---------------------------------------------------------------------
    def _step(self) -> None:
        running = self._live()
        # each generation's stop is read once: the event loop may ask for it between two
        # of its choices, and they end in the same step, freeing their slots together
        stops = {id(seq.job): seq.job.stop_reason for seq in running}
        for seq in running:
            reason = stops[id(seq.job)]
            if reason is not None:
                self._end(seq, reason)
            elif seq.source is not None:
                self._from_source(seq)
        live = [s for s in self._live() if s.source is None]
        if not live:
            return
        jobs = list({id(s.job): s.job for s in live}.values())  # the step's generations
        n, read = self._fill(live, len(jobs) == 1)
        # a step that reads a lone generation's prompt chunk, or more than a chunk of
        # prompts, may stop inside llama_decode once every generation in it has stopped;
        # a step that only decodes stops between steps, so that the others go on. The
        # callback runs per graph node and takes the GIL each time: it is installed only
        # for such steps.
        armed = (len(jobs) == 1 and n > len(live)) or read > self.chunk
        self._arm(jobs if armed else [])
        self._flush()  # the event loop handles them while the decode runs without the GIL
        status = self._lib.llama_decode(self._ctx, self._batch) if n else 0
        if status == 2 and _all_stopped(jobs):
            for seq in live:  # aborted mid-batch: the cells are partial
                self._end(seq, str(seq.job.stop_reason), drop=True)
            return
        if status != 0:
            log.error("decode failed", extra={"modelId": self.model, "status": status,
                                              "tokens": n})
            self._fail(live, InferenceError(
                "ERR_INFERENCE_FAILED", f"the runtime failed: llama_decode returned {status}"))
            return
        for seq in live:
            if seq.job.sampling.echo and (seq.scoring or not seq.scored):
                self._score(seq)
            if seq.index < 0:
                continue
            if seq.limit == 0:  # the prompt scored, nothing asked of the answer
                self._end(seq, "length")
            elif seq.drafts:
                self._judge(seq)
            else:
                self._advance(seq, seq.sample(self._ctx))

    def _judge(self, seq: Sequence) -> None:
        """Check a draft decoded after ``last``: the model's pick after ``last`` and after
        each drafted token that was its pick, so the drafted tokens it agreed with and
        one of its own are emitted, and the cells of the refused ones are dropped."""
        drafts, seq.drafts = seq.drafts, []
        first = seq.index  # the logits after ``last``; the draft's follow in the batch
        picked = [(seq.sample(self._ctx), first)]  # (token, where its logits are)
        for k, token in enumerate(drafts):
            if picked[-1][0] != token:
                break
            seq.index = first + 1 + k
            picked.append((seq.sample(self._ctx), seq.index))
        accepted = len(picked) - 1
        assert seq.lookup is not None
        seq.lookup.judged(len(drafts), accepted)
        keep = len(seq.kv) - (len(drafts) - accepted)
        if keep < len(seq.kv):
            self._lib.llama_memory_seq_rm(self._mem, seq.slot, keep, -1)
            seq.trim(keep)
        for token, index in picked:
            seq.index = index  # its logprobs, where asked for, come from there
            self._advance(seq, token)
            if seq.sampler is None:  # it ended (a stop, the end of text, its length)
                break

    def _emit(self, job: Generation, event: tuple[Any, ...]) -> None:
        """Hold ``event`` for ``job`` until the step's flush."""
        if not job.outbox:
            self._posting.append(job)
        job.outbox.append(event)

    def _flush(self) -> None:
        """Deliver the held events: one hand-over per generation and step. It happens
        just before ``llama_decode``, so the event loop's work on them overlaps the decode
        instead of holding the GIL while this thread samples."""
        for job in self._posting:
            events, job.outbox = job.outbox, []
            job.deliver(events)
        self._posting.clear()

    def _fail(self, seqs: list[Sequence], error: InferenceError) -> None:
        """Answer the generations of ``seqs`` with ``error`` and free their slots."""
        told: set[int] = set()
        for seq in seqs:
            if id(seq.job) not in told:
                told.add(id(seq.job))
                seq.job.stop("error")
                self._emit(seq.job, ("error", error))
            self._end(seq, "error", quiet=True, drop=True)

    def cells_used(self) -> int:
        """KV cells held by running sequences (read from other threads: a snapshot)."""
        return sum(len(s.kv) for s in list(self.slots) if s is not None)

    def _arm(self, jobs: list[Generation]) -> None:
        """Install the abort callback for the step of ``jobs``, or remove it (none)."""
        if bool(jobs) != bool(self._armed):
            callback = self._abort if jobs else self._no_abort
            self._lib.llama_set_abort_callback(self._ctx, callback, None)
        self._armed = jobs

    def _should_abort(self, _data: Any) -> bool:
        jobs = self._armed
        return bool(jobs) and _all_stopped(jobs)

    def _live(self) -> list[Sequence]:
        return [s for s in self.slots[:self.running] if s is not None]

    def _fill(self, live: list[Sequence], single: bool) -> tuple[int, int]:
        """Write this step's tokens into the batch, in slot order: the next token of every
        decoding sequence, then the prompt tokens of the sequences still reading one.
        Returns the number of tokens, and how many of them are prompt tokens.

        A prompt whose unread part fits in ``chunk`` is read whole, as many of them as the
        batch holds: sixteen short prompts that arrive together then start in the same
        step and end together, instead of one after another with a tail of steps that
        decode fewer sequences, and one large batch reads them faster than several small
        ones. Longer prompts share ``chunk`` tokens a step, oldest first, so that the
        decoding sequences keep getting a token every few dozen prompt tokens
        (``LONE_CHUNK`` where ``single``, one generation, reads and nothing decodes). A
        scored prompt (``echo``) takes a row of logits per token and stays in the shared
        budget."""
        b = self._batch
        n = 0
        readers = sorted((s for s in live if s.pending), key=lambda s: s.job.order)
        lone = (single and not live[0].job.sampling.echo
                and len(readers) == len(live))
        budget = max(self.chunk, LONE_CHUNK) if lone else self.chunk
        space = self._batch_tokens - (len(live) - len(readers)) * (1 + self.drafts)  # for prompts
        takes: dict[int, int] = {}  # slot: prompt tokens it reads in this step
        for seq in readers:
            need = len(seq.pending)
            if need <= min(self.chunk, space) and not seq.job.sampling.echo:
                takes[seq.slot] = need  # read whole, beside the shared budget
            elif budget and space:
                takes[seq.slot] = min(need, budget, space)
                budget -= takes[seq.slot]
            else:
                continue
            space -= takes[seq.slot]
        for seq in live:
            seq.index = -1
            if seq.slot in takes:
                take = seq.pending[:takes[seq.slot]]
                del seq.pending[:len(take)]
                echo = seq.job.sampling.echo
                for k, token in enumerate(take):
                    if echo and k + 1 < len(take):  # its logits score the next prompt token
                        seq.scoring.append((n, take[k + 1]))
                    elif echo and seq.pending:
                        seq.scoring.append((n, seq.pending[0]))
                    n = self._put(b, n, seq, token, echo)
                if not seq.pending:
                    b.logits[n - 1] = True
                    seq.index = n - 1
            elif seq.last >= 0:
                seq.index = n
                n = self._put(b, n, seq, seq.last, True)
                if seq.lookup is not None:
                    room = min(seq.limit - seq.made - 1, self.cells - len(seq.kv) - 1)
                    seq.drafts = seq.lookup.draft(room)
                    for token in seq.drafts:
                        n = self._put(b, n, seq, token, True)
        b.n_tokens = n
        return n, sum(takes.values())

    @staticmethod
    def _put(b: Any, n: int, seq: Sequence, token: int, logits: bool) -> int:
        b.token[n] = token
        b.pos[n] = len(seq.kv)
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq.slot
        b.logits[n] = logits
        seq.kv.append(token)
        return n + 1

    def _advance(self, seq: Sequence, token: int) -> None:
        """Account for the token ``seq`` just sampled: emit it, or end the choice."""
        job = seq.job
        if self._vocab.ends(token):
            self._end(seq, "stop")
            return
        seq.made += 1
        job.made += 1
        logprob = self._logprob(seq, token) if job.sampling.logprobs is not None else None
        if seq.lookup is not None:
            seq.lookup.append(token)
        text, stopped = seq.text(token)
        if text or logprob is not None:
            self._emit(job, ("delta", seq.choice, text, logprob))
        if stopped:
            self._end(seq, "stop")
        elif seq.made >= seq.limit:
            self._end(seq, "length")
        else:
            seq.last = token

    def _end(self, seq: Sequence, reason: str, quiet: bool = False, drop: bool = False
             ) -> None:
        """Finish one choice and free its slot; the others carry on. ``drop``: its cells
        cannot be trusted (a failed or aborted decode), so none is kept for reuse."""
        job = seq.job
        if seq.lookup is not None and seq.lookup.drafted:
            self._emit(job, ("drafts", seq.lookup.drafted, seq.lookup.accepted))
        if not quiet:
            rest = seq.rest(reason)
            if rest:
                self._emit(job, ("delta", seq.choice, rest, None))
            self._emit(job, ("finish", seq.choice, reason, seq.made, seq.stop_string))
        seq.close()
        if not drop:  # those waiting on its reading copy it now, or read it all themselves
            for waiting in self.slots[:self.running]:
                if waiting is not None and waiting.source is seq:
                    self._from_source(waiting)
        slot = seq.slot
        self.slots[slot] = None
        self.running -= 1
        kept = seq.source is None and not drop
        self._cached[slot] = (seq.kv, seq.hashes) if kept else ([], PrefixHashes())
        if drop:
            self._lib.llama_memory_seq_rm(self._mem, slot, -1, -1)
        last = self.running  # the highest occupied slot moves into the gap
        if last != slot:
            mover = self.slots[last]
            assert mover is not None
            self._copy(last, slot)
            self._lib.llama_memory_seq_rm(self._mem, last, -1, -1)
            self.slots[slot], self.slots[last] = mover, None
            self._cached[slot], self._cached[last] = ([], PrefixHashes()), ([], PrefixHashes())
            mover.slot = slot
        job.live -= 1
        if not quiet:
            self._maybe_end(job)

    def _maybe_end(self, job: Generation) -> None:
        if job.live or job.admitted < job.sampling.n:
            return
        self._emit(job, ("end", job.stop_reason, job.made))
        if job.stop_reason is not None:
            log.info("generation stopped", extra={
                "modelId": self.model, "requestId": job.request_id,
                "reason": job.stop_reason,
                "stopMs": round((time.perf_counter() - job.stop_asked) * 1000, 2)})

    def _score(self, seq: Sequence) -> None:
        """The log-probabilities of the prompt tokens this step read logits for (echo):
        each from the logits of the position before it; the prompt's first token has
        none."""
        entries = []
        if not seq.scored:
            first = seq.job.tokens[0]
            entries.append({"token": seq.piece(first), "logprob": None})
            seq.scored = True
        for index, token in seq.scoring:
            entries.append(self._logprob(seq, token, index))
        seq.scoring = []
        self._emit(seq.job, ("promptLogprobs", seq.choice, entries))

    def _logprob(self, seq: Sequence, token: int, index: int | None = None
                 ) -> dict[str, Any]:
        """The token's log-probability (and the ``top`` best) from the logits at ``index``
        of the batch (default: the ones the sequence sampled from)."""
        top = seq.job.sampling.logprobs or 0
        pointer = self._lib.llama_get_logits_ith(self._ctx,
                                                 seq.index if index is None else index)
        logits = self._vocab.row(pointer).astype(np.float64)
        peak = logits.max()
        log_norm = peak + math.log(float(np.exp(logits - peak).sum()))
        entry: dict[str, Any] = {"token": seq.piece(token),
                                 "logprob": float(logits[token] - log_norm)}
        if top:
            best = np.argpartition(-logits, top)[:top]
            best = best[np.argsort(-logits[best], kind="stable")]
            entry["top"] = [(seq.piece(int(i)), float(logits[i] - log_norm)) for i in best]
        return entry

    def _shut(self) -> None:
        """The session closed (the engine stopped every generation first): answer what is
        left, then free the context."""
        for seq in self._live():
            seq.job.stop("shutdown")
            self._end(seq, "shutdown")
        for job in self._waiting:
            job.stop("shutdown")
            self._emit(job, ("end", "shutdown", job.made))
        self._waiting.clear()
        self._flush()
        self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self._ctx)
        self._llm.close()
