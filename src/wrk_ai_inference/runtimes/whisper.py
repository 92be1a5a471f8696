"""Speech-to-text models on faster-whisper (CTranslate2) on the CPU.

A model is a folder in CTranslate2's format (``model.bin``, ``config.json``,
``tokenizer.json``, ``vocabulary.txt``). Its transcriptions run on threads of its own,
``parallel`` at once (model.json), each on one of as many CTranslate2 workers: a
transcription's beam search leaves cores idle between its steps, which another one fills.
Threads are set explicitly (CTranslate2's default counts the machine's cores, not the
process's quota).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import InferenceError, first_line
from ..models.spec import ModelSpec, TensorSpec
from .base import ModelSession, RunHandle, Tensors, missing_extra, spec_threads


class WhisperSession(ModelSession):
    """A loaded model: CTranslate2's Whisper and the thread its transcriptions run on. The
    task (``tasks/speech_to_text.py``) drives it; it has no tensor ``run``."""

    def __init__(self, model: Any, model_id: str, parallel: int) -> None:
        self.model = model
        self.model_id = model_id
        self.multilingual = bool(model.model.is_multilingual)
        self.inputs = [TensorSpec(name="audio", datatype="BYTES", shape=[1])]
        self.outputs = [TensorSpec(name="text", datatype="BYTES", shape=[1])]
        self.thread = ThreadPoolExecutor(parallel, thread_name_prefix=f"whisper-{model_id}")

    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"model '{self.model_id}' transcribes audio: send "
                             '{"inputData": {"audio": "<base64>"}} to /api/inference, or use '
                             "/v1/audio/transcriptions; it takes no tensors")

    def close(self) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)


class WhisperRuntime:
    name = "whisper"

    def load(self, artifact: Path, spec: ModelSpec, model: str) -> ModelSession:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise missing_extra(model, "speech-to-text needs faster-whisper", "audio") from exc
        threads = spec_threads(spec)
        try:
            whisper = WhisperModel(str(artifact.parent), device="cpu",
                                   compute_type=spec.compute_type, cpu_threads=threads,
                                   num_workers=spec.parallel)
        except (ValueError, RuntimeError, OSError) as exc:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model}': faster-whisper cannot load "
                                 f"{artifact.parent.name}: {first_line(exc)}") from exc
        return WhisperSession(whisper, model, spec.parallel)
