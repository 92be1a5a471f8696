"""``model.json``: what a model directory declares about itself.

Only ``runtime`` and ``file`` are required; inputs and outputs are read from the
artifact when absent. Unknown keys are refused so that a typo in a model's
manifest shows up as a clear load failure instead of a silently ignored option.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..datatypes import V2_TO_NUMPY
from ..errors import InferenceError, first_line

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TASKS = ("tensor", "classification")


def check_model_id(model_id: str) -> str:
    """Reject ids that are not plain names, so no id can become a path elsewhere."""
    if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id) or ".." in model_id:
        shown = repr(model_id[:64]) if isinstance(model_id, str) else type(model_id).__name__
        raise InferenceError(
            "ERR_MODEL_NOT_FOUND",
            f"model id {shown} is not valid: ids match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$",
            {"modelId": model_id[:128] if isinstance(model_id, str) else None},
        )
    return model_id


class TensorSpec(BaseModel):
    """One input or output: v2 datatype, shape with -1 for a free dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    datatype: str
    shape: list[int]

    @field_validator("datatype")
    @classmethod
    def _datatype(cls, value: str) -> str:
        if value not in V2_TO_NUMPY:
            raise ValueError(f"unknown datatype {value!r}; use one of {', '.join(V2_TO_NUMPY)}")
        return value

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: list[int]) -> list[int]:
        if any(d < -1 for d in value):
            raise ValueError("shape dimensions are >= 0, or -1 for a free dimension")
        return value

    @property
    def has_batch_dim(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1


class DriveSource(BaseModel):
    """The model's files are the folder ``path`` of a Hyperdrive, at ``version`` (the
    drive's latest when absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hyperdrive: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="the drive's key")
    path: str = Field(pattern=r"^/[A-Za-z0-9._-]+$", description="the model's folder")
    version: int | None = Field(None, ge=1)


class UrlSource(BaseModel):
    """The artifact is at ``url`` (http or https); the other files are local."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(pattern=r"^https?://[^\s]+$")


class Sampling(BaseModel):
    """A language model's default sampling; each request may override every field."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, alias="topP", gt=0, le=1)
    top_k: int = Field(40, alias="topK", ge=0)
    min_p: float = Field(0.05, alias="minP", ge=0, le=1)
    repeat_penalty: float = Field(1.0, alias="repeatPenalty", gt=0)
    max_tokens: int | None = Field(None, alias="maxTokens", ge=1)


class ModelSpec(BaseModel):
    """The parsed model.json of one model directory."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    runtime: str
    file: str
    version: str = "1"
    task: Literal["tensor", "classification", "text-embedding",
                  "image-classification", "text-generation", "speech-to-text"] = "tensor"
    description: str = ""
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    source: DriveSource | UrlSource | None = Field(
        None, description="where the files are fetched from when not on disk")
    labels: list[str] | str | None = None
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    max_batch_size: int = Field(32, alias="maxBatchSize", ge=0)
    batch_delay_ms: float = Field(2.0, alias="batchDelayMs", ge=0)
    warmup: bool = False
    preprocess: dict[str, Any] = Field(default_factory=dict)
    postprocess: dict[str, Any] = Field(default_factory=dict)
    # ---- language models (runtime llama, task text-generation) ----
    context_length: int = Field(2048, alias="contextLength", ge=16, le=1 << 20,
                                description="tokens of prompt and answer together")
    parallel: int = Field(1, ge=1, le=256, description="sequences generated at once, "
                          "each with a context of contextLength tokens (runtime whisper: "
                          "transcriptions at once)")
    prompt_chunk: int = Field(64, alias="promptChunk", ge=8, le=8192,
                              description="prompt tokens read per step beside the "
                              "decoding sequences, shared by the longer prompts; a "
                              "prompt no longer than this is read whole in one step")
    prompt_lookup: int = Field(0, alias="promptLookup", ge=0, le=16,
                               description="speculative decoding by prompt lookup: the most "
                               "tokens a greedy sequence drafts per step from its own "
                               "history (0: off); requests may ask for fewer")
    prompt_cache: bool = Field(True, alias="promptCache",
                               description="reuse the KV cells of a prompt's beginning that "
                               "another sequence, running or idle, already holds")
    threads: int = Field(0, ge=0, le=1024, description="llama.cpp threads; 0 = usable cores")
    flash_attention: bool = Field(True, alias="flashAttention",
                                  description="llama.cpp's fused attention kernels")
    chat_template: str | None = Field(None, alias="chatTemplate",
                                      description="Jinja chat template; default: the GGUF's")
    stop: list[str] = Field(default_factory=list, description="always-on stop strings")
    sampling: Sampling = Field(default_factory=lambda: Sampling.model_validate({}))
    # ---- speech-to-text (runtime whisper) ----
    compute_type: Literal["int8", "int8_float32", "float32"] = Field(
        "int8", alias="computeType", description="CTranslate2's weights and arithmetic")

    @model_validator(mode="after")
    def _fetched_files_are_checked(self) -> ModelSpec:
        if self.source is not None and self.sha256 is None:
            raise ValueError("a model with a 'source' needs the artifact's 'sha256': fetched "
                             "bytes are loaded only once they match it")
        return self

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        path = Path(value)
        if path.is_absolute() or ".." in path.parts or not value.strip():
            raise ValueError("'file' must be a relative path inside the model directory")
        return value


def read_spec(model_id: str, path: Path) -> ModelSpec:
    """Parse ``path`` (a model.json), raising ERR_MODEL_LOAD_FAILED with what is wrong."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InferenceError(
            "ERR_MODEL_LOAD_FAILED",
            f"model '{model_id}': model.json is unreadable: {first_line(exc)}",
        ) from exc
    return parse_spec(model_id, raw)


def parse_spec(model_id: str, raw: Any) -> ModelSpec:
    """Validate a parsed model.json, raising ERR_MODEL_LOAD_FAILED with what is wrong."""
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'model.json'}: {e['msg']}"
            for e in exc.errors()
        )
        raise InferenceError(
            "ERR_MODEL_LOAD_FAILED", f"model '{model_id}': model.json is invalid: {problems}"
        ) from exc
