"""Tasks, registered by model.json's ``task`` name: what a request means for a model.

Add one by subclassing ``tasks.base.Task`` and registering it in ``load_task``;
validation, admission, deadlines, history and metrics come from the engine.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InferenceError
from ..models.spec import ModelSpec
from ..runtimes.base import ModelSession
from ..runtimes.llama import LlamaSession
from .base import Limits, Task

__all__ = ["Limits", "Task", "load_task"]


def load_task(spec: ModelSpec, model_dir: Path, labels: list[str] | None,
              session: ModelSession, model_id: str, max_audio_s: float = 1800.0) -> Task:
    """The task's resources (a tokenizer, a chat template...), loaded once with the model."""
    from ..runtimes.whisper import WhisperSession

    if spec.task == "speech-to-text" or isinstance(session, WhisperSession):
        from .speech_to_text import SpeechToText

        if spec.task != "speech-to-text" or not isinstance(session, WhisperSession):
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}': task 'speech-to-text' and runtime "
                                 "'whisper' go together")
        return SpeechToText(spec, session, model_id, max_audio_s)
    if spec.task == "text-generation":
        from .text_generation import TextGeneration

        if not isinstance(session, LlamaSession):
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}': text-generation needs runtime 'llama'")
        return TextGeneration(spec, session, model_id)
    if isinstance(session, LlamaSession):
        raise InferenceError("ERR_MODEL_LOAD_FAILED",
                             f"model '{model_id}': runtime 'llama' serves task "
                             f"'text-generation', not '{spec.task}'")
    if spec.task == "text-embedding":
        from .text_embedding import TextEmbedding

        return TextEmbedding(spec, model_dir)
    if spec.task == "image-classification":
        from .image_classification import ImageClassification

        return ImageClassification(spec, labels)
    if spec.task == "classification":
        from .classification import ClassificationTask

        return ClassificationTask(spec, labels)
    from .tensor import TensorTask

    return TensorTask(spec, labels)

