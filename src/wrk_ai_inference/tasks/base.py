"""The contract every task keeps with the engine.

A task turns a request's ``inputData`` into the model's feeds and the model's
outputs into the answer a client wants; a streaming task (text generation)
produces events instead (``tasks.text_generation``). Tasks are registered by
name in ``tasks/__init__.py``, as runtimes are in ``runtimes/__init__.py``; the
engine knows only this contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import InferenceError
from ..models.spec import TensorSpec
from ..runtimes.base import Tensors


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: items per request, elements, bytes per string."""

    max_items: int
    max_elements: int
    max_string_bytes: int


def bad(message: str, **details: Any) -> InferenceError:
    return InferenceError("ERR_INVALID_INPUT", message, details)


class Task:
    """A tensor task: ``inputs`` then the run then ``outputs``."""

    name: ClassVar[str]
    #: preprocessing costs CPU (tokenising, decoding images): the engine runs it on a
    #: thread after admission; cheap checks run on the loop before a slot is taken
    costly: ClassVar[bool] = False
    #: the task answers with a stream of events (``infer_stream``), not one run
    streams: ClassVar[bool] = False

    def inputs(self, model_inputs: list[TensorSpec], data: Any, limits: Limits) -> Tensors:
        raise NotImplementedError

    def outputs(self, outputs: Tensors, feeds: Tensors, top_k: int,
                wanted: list[str] | None = None) -> dict[str, Any]:
        raise NotImplementedError


class StreamingTask(Task):
    """A task whose answer is a stream of events (text generation). The engine drives it:
    ``request`` checks a request on the loop, ``prepare`` makes its prompt on a helper
    thread after admission, ``generation`` is the job the model's thread runs and
    ``submit`` hands it over, and ``shaper`` turns the thread's events into the ones
    clients get. The thread hands over lists of events: ``("prompt", tokens)``,
    ``("cached", tokens)`` (of the prompt, those whose cells were reused),
    ``("promptLogprobs", choice, entries)``, ``("delta", choice, text, extra)``,
    ``("finish", choice, reason, tokens, info)``,
    ``("media", seconds_of_input, seconds_taken)`` (audio, for its metrics),
    ``("drafts", drafted, accepted)`` (speculative decoding, for its metrics), then
    ``("end", stop_reason, tokens)`` or ``("error", exc)``."""

    streams = True

    def request(self, data: Any, options: dict[str, Any]) -> Any:
        raise NotImplementedError

    def prepare(self, request: Any) -> Any:
        raise NotImplementedError

    def generation(self, request: Any, deliver: Any) -> Any:
        raise NotImplementedError

    def shaper(self, request: Any) -> Any:
        raise NotImplementedError

    def submit(self, job: Any) -> None:
        raise NotImplementedError

    def collector(self) -> Any:
        """What gathers the events into one answer (seed API, RPC, non-streamed calls):
        ``add(event)``, ``inference_id`` and ``result()``."""
        raise NotImplementedError

    # the tokenizer routes (``/tokenize``, ``/detokenize``, ``/tokenizer_info``): a
    # language model's; other streaming tasks (speech to text) have none
    def tokenize(self, text: Any, add_special: bool) -> list[int]:
        raise self._no_tokenizer()

    def detokenize(self, tokens: Any) -> str:
        raise self._no_tokenizer()

    def tokenizer_info(self) -> dict[str, Any]:
        raise self._no_tokenizer()

    def _no_tokenizer(self) -> InferenceError:
        return InferenceError("ERR_INVALID_REQUEST",
                              f"a {self.name} model has no tokenizer routes")
