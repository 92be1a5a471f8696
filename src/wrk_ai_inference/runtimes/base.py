"""The contract between the engine and a runtime (onnxruntime today, torch next).

A runtime loads an artifact into a ``ModelSession``. The engine calls
``ModelSession.run`` on a worker thread with a ``RunHandle`` it may cancel from
the event loop when a deadline passes; a runtime that can stop a run mid-way
says so with ``cancellable = True``, and one that cannot lets the run finish
while the slot stays counted.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import InferenceError

if TYPE_CHECKING:
    from ..models.spec import ModelSpec, TensorSpec

Tensors = dict[str, np.ndarray]


class RunHandle:
    """Cancellation handle for one run; the base version can only record the wish."""

    cancellable = False

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


#: the handle of runs done on the event loop: they end before anyone could cancel them
LOOP_RUN = RunHandle()


class ModelSession(ABC):
    """A loaded model: its tensor signature and a thread-safe ``run``."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: smoothed seconds per run, and per row of runs of several rows, kept by the engine
    #: (it decides what may run inline: a single run by the first, a batch by the second
    #: times its rows; a batch runs on a thread until a batch has been timed)
    run_seconds: float | None = None
    row_seconds: float | None = None

    def new_run(self) -> RunHandle:
        return RunHandle()

    @abstractmethod
    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        """Run on already validated, correctly typed inputs; called off the event loop."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's memory; called once, after the last run ended."""

    def memory_outside(self) -> int:
        """Memory the model holds outside this process (a runtime that runs it in child
        processes), counted with the growth measured here."""
        return 0

    def sequence_use(self) -> SequenceUse | None:
        """A runtime that generates sequences (a language model) says how its sequence
        slots are used; the others have none."""
        return None


@dataclass(frozen=True)
class SequenceUse:
    """A language model's sequence slots at one moment."""

    slots: int
    running: int
    waiting: int
    context_length: int  # cells per sequence
    kv_cache_use: float  # the fraction of cells running sequences hold


class Runtime(Protocol):
    name: str

    def load(self, artifact: Path, spec: ModelSpec, model: str) -> ModelSession: ...


def spec_threads(spec: ModelSpec) -> int:
    """model.json's ``threads``, else the cores this process may use: set explicitly, since
    llama.cpp's and CTranslate2's defaults count the machine's cores, not the quota."""
    return spec.threads or len(os.sched_getaffinity(0))


def import_extra(module: str, model: str, what: str, extra: str) -> Any:
    """``module`` of a runtime's optional package, imported when a model first needs it; a
    load error naming the extra to install when it is absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InferenceError("ERR_MODEL_LOAD_FAILED",
                             f"model '{model}': {what} (pip install "
                             f"'wrk-ai-inference[{extra}]', or `make setup`)") from exc
