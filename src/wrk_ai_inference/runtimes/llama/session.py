"""GGUF language models on llama.cpp (llama-cpp-python), one inference thread per model.

llama objects are not thread-safe, so each loaded model owns one thread, the
scheduler, which alone touches them: generations reach it through a FIFO and their
events come back through a thread-safe callback; the event loop never calls llama, not
even to tokenise. The high-level ``Llama`` object serves for the model, its tokenizer
and metadata; generation runs on a context of our own, with ``parallel`` sequence
streams of ``contextLength`` cells each, batched by the scheduler.

A generation stops when its ``stop_reason`` is set (cancel, deadline, a client gone),
at the next step: a step decodes one token per sequence and at most ``promptChunk``
prompt tokens, so it is short by construction. A batch of a single generation (a long
prompt read alone, in larger steps) stops sooner, inside ``llama_decode``, through the
abort callback.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InferenceError, first_line
from ...logs import get_logger
from ..base import ModelSession, RunHandle, SequenceUse, Tensors, import_extra, spec_threads
from .generation import Generation
from .scheduler import Scheduler, batch_size
from .vocabulary import Vocabulary

if TYPE_CHECKING:
    from ...models.spec import ModelSpec

log = get_logger("llama")

#: context settings the high-level object derived from the GGUF, kept for our context
_INHERITED = ("flash_attn_type", "rope_scaling_type", "rope_freq_base", "rope_freq_scale",
              "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow",
              "yarn_orig_ctx", "type_k", "type_v", "offload_kqv")


class LlamaSession(ModelSession):
    """A loaded GGUF model and its scheduler thread."""

    def __init__(self, llm: Any, ctx: Any, spec: ModelSpec, model: str) -> None:
        import llama_cpp

        from ...models.spec import TensorSpec

        self.llm = llm
        self.model = model
        self.inputs = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
        self.outputs = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
        self.chat_template: str | None = llm.metadata.get("tokenizer.chat_template")
        self.bos_text = self.token_text(llm.token_bos())
        self.eos_text = self.token_text(llm.token_eos())
        self.slots = spec.parallel
        self.n_ctx = int(llama_cpp.llama_n_ctx(ctx)) // spec.parallel  # cells per sequence
        vocabulary = Vocabulary(llama_cpp, llm._model.vocab, int(llm.n_vocab()))
        self._lib, self._vocab = llama_cpp, vocabulary.ptr
        self.max_token_bytes = vocabulary.longest_piece()
        self._parsed: set[bytes] = set()  # digests of grammars llama.cpp accepted
        self._scheduler = Scheduler(llama_cpp, llm, ctx, vocabulary, spec.parallel, self.n_ctx,
                                    spec.prompt_chunk, model, spec.prompt_cache,
                                    spec.prompt_lookup)
        self._submitted = 0
        self._thread = threading.Thread(target=self._scheduler.serve, name=f"llama-{model}",
                                        daemon=True)
        self._thread.start()

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """The prompt's tokens, special tokens parsed as the chat template writes them.
        Safe beside the scheduler thread (it reads the vocabulary only), so prompts are
        tokenised on a helper thread under their request's deadline, never on the model's
        thread."""
        data = text.encode("utf-8")
        room = len(data) + 2  # a token covers at least one byte; BOS and EOS may be added
        tokens = (self._lib.llama_token * room)()
        n = int(self._lib.llama_tokenize(self._vocab, data, len(data), tokens, room,
                                         add_bos, True))
        if n < 0:
            raise InferenceError("ERR_INVALID_INPUT", "the prompt could not be tokenised")
        return list(tokens[:n])

    def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens``, special tokens written out (ids checked first: they come
        from callers). Reads the vocabulary only, like ``tokenize``."""
        n_vocab = int(self.llm.n_vocab())
        bad = next((t for t in tokens if not isinstance(t, int) or isinstance(t, bool)
                    or not 0 <= t < n_vocab), None)
        if bad is not None or not isinstance(tokens, list):
            raise InferenceError("ERR_INVALID_INPUT", f"tokens must be ids of this model's "
                                 f"vocabulary (0 to {n_vocab - 1}); got {str(bad)[:40]!r}")
        data = (self._lib.llama_token * max(1, len(tokens)))(*tokens)
        room = 64 + len(tokens) * self.max_token_bytes
        buffer = ctypes.create_string_buffer(room)
        n = int(self._lib.llama_detokenize(self._vocab, data, len(tokens), buffer, room,
                                           False, True))
        return buffer.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def grammar_parses(self, text: str) -> bool:
        """Whether llama.cpp accepts ``text`` as GBNF (checked once per text, off the
        model's thread: parsing reads the vocabulary only)."""
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).digest()  # a grammar may be a megabyte: keep its hash
        if digest in self._parsed:
            return True
        sampler = self._lib.llama_sampler_init_grammar(self._vocab, data, b"root")
        if not sampler:
            return False
        self._lib.llama_sampler_free(sampler)
        if len(self._parsed) >= 64:
            self._parsed.clear()
        self._parsed.add(digest)
        return True

    def token_text(self, token: int) -> str:
        """A token's text as the vocabulary writes it (special tokens as themselves)."""
        if token < 0:
            return ""
        text: bytes = self.llm._model.token_get_text(token)
        return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)

    @property
    def running(self) -> int:
        """Sequences generating now."""
        return self._scheduler.running

    @property
    def waiting(self) -> int:
        """Generations queued for a sequence slot."""
        return self._submitted - self._scheduler.taken

    def sequence_use(self) -> SequenceUse:
        return SequenceUse(self.slots, self.running, self.waiting, self.n_ctx, self.kv_use())

    def kv_use(self) -> float:
        """The fraction of KV cells that running sequences hold (0 when idle)."""
        return self._scheduler.cells_used() / (self.n_ctx * self.slots)

    # ---- the engine's side --------------------------------------------------------
    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"model '{self.model}' generates text: send a prompt or messages")

    def submit(self, job: Generation) -> None:
        """Queue a generation (from the event loop); it starts after those queued before."""
        self._submitted += 1
        self._scheduler.jobs.put(job)

    def close(self) -> None:
        self._scheduler.jobs.put(None)


class LlamaRuntime:
    """Loads GGUF files with the threads, context and sequence slots model.json gives."""

    name = "llama"

    def load(self, artifact: Path, spec: ModelSpec, model: str) -> ModelSession:
        llama_cpp = import_extra("llama_cpp", model, "GGUF models need llama-cpp-python",
                                 "llm")
        threads = spec_threads(spec)
        try:
            # its own context stays minimal: generation runs on the one made below
            llm = llama_cpp.Llama(str(artifact), n_ctx=256, n_batch=256, n_threads=threads,
                                  n_threads_batch=threads, flash_attn=spec.flash_attention,
                                  seed=0, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model}': llama.cpp cannot load {spec.file}: "
                                 f"{first_line(exc)}") from exc
        params = llama_cpp.llama_context_default_params()
        for name in _INHERITED:
            setattr(params, name, getattr(llm.context_params, name))
        params.n_threads = params.n_threads_batch = threads
        params.n_ctx = spec.context_length * spec.parallel
        params.n_batch = params.n_ubatch = batch_size(spec.prompt_chunk, spec.parallel,
                                                      spec.prompt_lookup)
        params.n_seq_max = spec.parallel
        params.kv_unified = False
        params.swa_full = False  # a sliding-window layer keeps its window only (as llama-server)
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not ctx:
            llm.close()
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model}': llama.cpp cannot make a context of {spec.parallel} "
                f"sequences x {spec.context_length} tokens (out of memory?)")
        return LlamaSession(llm, ctx, spec, model)
