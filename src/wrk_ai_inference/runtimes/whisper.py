"""Speech-to-text models on faster-whisper (CTranslate2) on the CPU.

A model is a folder in CTranslate2's format (``model.bin``, ``config.json``,
``tokenizer.json``, ``vocabulary.txt``). Each transcription runs in a child process that
holds the model (``whisper_child.py``): CTranslate2 cannot be interrupted inside a 30 s
window, and a process can be killed, so a deadline, a cancel or a disconnect stops the
work at once rather than when the window ends. Up to ``parallel`` children (model.json)
transcribe at once; they start when first needed and stay for the next request, and a
killed one is replaced by the next request that needs it. Threads are set explicitly
(CTranslate2's default counts the machine's cores, not the process's quota).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from .. import framing
from ..errors import InferenceError, without_paths
from ..logs import get_logger
from ..models.spec import ModelSpec, TensorSpec
from .base import ModelSession, RunHandle, Tensors, import_extra, spec_threads
from .whisper_child import FrameBuffer

log = get_logger("whisper")

#: how often a transcription's driver looks for a stop while the child decodes
STOP_POLL_S = 0.02

#: glibc's allocator as the children run it (mallopt(3); a setting already in the worker's
#: environment wins). A transcription allocates and frees arrays of megabytes (log-mel
#: features, CTranslate2's buffers); by default each is a fresh mmap handed back to the
#: kernel when freed, so every transcription faults its pages in again and much of a busy
#: child's CPU time goes to the kernel. Kept in the heap instead, the pages stay mapped for
#: the next one, at the price of a child's resident memory staying near its peak (up to
#: this much free memory is kept). ``make bench-speech`` measures both.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


class ChildFailed(RuntimeError):
    """A child process ended or answered an error; the worker logs it, the client gets
    ``ERR_INFERENCE_FAILED``."""


class WhisperChild:
    """One child process and the model it holds."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0,
                                        env={**ALLOCATOR, **os.environ})
        self.buffer = FrameBuffer()
        self.pending: list[dict[str, Any]] = []

    def next(self, stopped: Callable[[], bool]) -> dict[str, Any] | None:
        """The child's next message; None as soon as ``stopped()`` says so (the caller
        kills the child)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while not self.pending:
            if stopped():
                return None
            ready, _, _ = select.select([fd], [], [], STOP_POLL_S)
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    raise ChildFailed(f"the transcription process ended "
                                      f"(exit {self.process.wait()})")
                self.buffer.data += data
                self.pending = self.buffer.messages()
        return self.pending.pop(0)

    def send(self, header: dict[str, Any], payload: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(framing.encode(header, payload))
        except (BrokenPipeError, OSError) as exc:
            raise ChildFailed("the transcription process is gone") from exc

    def memory(self) -> int:
        try:
            return int(psutil.Process(self.process.pid).memory_info().rss)
        except psutil.Error:
            return 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class WhisperSession(ModelSession):
    """A loaded model: its children and the threads that drive them. The task
    (``tasks/speech_to_text.py``) calls ``transcribe``; there is no tensor ``run``."""

    def __init__(self, command: list[str], first: WhisperChild, multilingual: bool,
                 model_id: str, parallel: int) -> None:
        self.command = command
        self.model_id = model_id
        self.multilingual = multilingual
        self.parallel = parallel
        self.inputs = [TensorSpec(name="audio", datatype="BYTES", shape=[1])]
        self.outputs = [TensorSpec(name="text", datatype="BYTES", shape=[1])]
        self.thread = ThreadPoolExecutor(parallel, thread_name_prefix=f"whisper-{model_id}")
        self._idle = [first]
        self._busy: set[WhisperChild] = set()
        self._lock = threading.Lock()
        self.child_memory = first.memory()

    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"model '{self.model_id}' transcribes audio: send "
                             '{"inputData": {"audio": "<base64>"}} to /api/inference, or use '
                             "/v1/audio/transcriptions; it takes no tensors")

    def memory_outside(self) -> int:
        """What the children hold, counted as if all ``parallel`` were running."""
        return self.child_memory * self.parallel

    def transcribe(self, audio: np.ndarray, options: dict[str, Any], words: bool,
                   stopped: Callable[[], bool],
                   on_segment: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Transcribe in a child, handing over each segment; the child's closing facts,
        or None when ``stopped()`` said so first (the child is then killed)."""
        child = self._take()
        healthy = False  # whether the child may serve the next transcription
        try:
            child.send({"options": options, "words": words},
                       np.ascontiguousarray(audio, np.float32).tobytes())
            while True:
                message = child.next(stopped)
                if message is None:
                    return None
                if "segment" in message:
                    on_segment(message["segment"])
                    continue
                healthy = True  # it answered in full, or reported its failure and waits
                if "done" in message:
                    return dict(message["done"])
                raise ChildFailed(str(message.get("error", message)))
        finally:
            self._release(child, healthy)

    def _take(self) -> WhisperChild:
        with self._lock:
            if self._idle:
                child = self._idle.pop()
                self._busy.add(child)
                return child
        child, _ = start_child(self.command, self.model_id)
        with self._lock:
            self._busy.add(child)
        return child

    def _release(self, child: WhisperChild, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(child)
            if healthy:
                self._idle.append(child)
        if not healthy:
            child.kill()

    def close(self) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            children = [*self._idle, *self._busy]
            self._idle, self._busy = [], set()
        for child in children:
            child.kill()


def start_child(command: list[str], model_id: str) -> tuple[WhisperChild, bool]:
    """A child with the model loaded, and whether the model is multilingual."""
    child = WhisperChild(command)
    try:
        hello = child.next(lambda: False)
    except ChildFailed as exc:
        child.kill()
        raise InferenceError("ERR_MODEL_LOAD_FAILED",
                             f"model '{model_id}': faster-whisper could not start") from exc
    assert hello is not None
    if not hello.get("ready"):
        child.kill()
        raise InferenceError("ERR_MODEL_LOAD_FAILED",
                             f"model '{model_id}': faster-whisper cannot load it: "
                             f"{without_paths(str(hello.get('failed', hello)))[:300]}")
    return child, bool(hello.get("multilingual"))


class WhisperRuntime:
    name = "whisper"

    def load(self, artifact: Path, spec: ModelSpec, model: str) -> ModelSession:
        # the child imports it: say so here if it is absent
        import_extra("faster_whisper", model, "speech-to-text needs faster-whisper", "audio")
        command = [sys.executable, "-m", "wrk_ai_inference.runtimes.whisper_child",
                   str(artifact.parent), spec.compute_type, str(spec_threads(spec))]
        child, multilingual = start_child(command, model)
        return WhisperSession(command, child, multilingual, model, spec.parallel)
