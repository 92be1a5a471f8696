"""Typed configuration: defaults < ``config/common.json`` < environment < CLI flags.

Keys are camelCase like the seed's config. Every key can be set by an
environment variable ``WRK_AI_INFERENCE_<UPPER_SNAKE>`` and by a CLI flag
``--kebab-case``. Unknown keys and bad values stop the start with a message that
names the key and where it came from, because a typo that is silently ignored
turns into a production incident later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

ENV_PREFIX = "WRK_AI_INFERENCE_"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(value: int | float | str) -> int:
    """Bytes from ``2GB``, ``512MiB``, ``1048576`` (KB/MB/GB are powers of 1000, KiB... of 1024)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '2GB'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size; use bytes or a string like '2GB' or '512MiB'")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    binary = "I" in unit
    letter = unit[:1] if unit[:1] in "KMGT" else ""
    factor = 1024 ** "_KMGT".index(letter) if binary and letter else _UNITS[letter]
    return int(number * factor)


class Settings(BaseModel):
    """Every key the worker reads. Field aliases are the camelCase config names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    debug: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
    max_concurrent_inferences: int = Field(10, alias="maxConcurrentInferences", ge=1, le=4096)
    max_queued_inferences: int = Field(100, alias="maxQueuedInferences", ge=0, le=1_000_000)
    inference_timeout: int = Field(30_000, alias="inferenceTimeout", ge=1, description="ms")
    model_cache_size: int = Field(5, alias="modelCacheSize", ge=1)
    memory_limit: int = Field(parse_size("2GB"), alias="memoryLimit", description="bytes")
    health_check_interval: int = Field(10_000, alias="healthCheckInterval", ge=100)
    supported_model_types: list[str] = Field(
        default_factory=lambda: ["onnx", "pytorch", "llama", "whisper"],
        alias="supportedModelTypes"
    )
    gpu_enabled: bool = Field(False, alias="gpuEnabled")
    model_repository: str = Field("examples/models", alias="modelRepository")
    preload: list[str] = Field(default_factory=list)
    auto_load: bool = Field(False, alias="autoLoad")
    history_size: int = Field(10_000, alias="historySize", ge=1)
    max_request_bytes: int = Field(parse_size("64MiB"), alias="maxRequestBytes", ge=1)
    max_tensor_elements: int = Field(16_000_000, alias="maxTensorElements", ge=1)
    max_string_bytes: int = Field(parse_size("1MiB"), alias="maxStringBytes", ge=1,
                                  description="longest BYTES element, in UTF-8 bytes")
    api_keys: list[str] = Field(default_factory=list, alias="apiKeys")
    max_audio_seconds: float = Field(1800.0, alias="maxAudioSeconds", gt=0, le=86_400,
                                     description="longest recording a transcription takes")
    rack_http: bool = Field(False, alias="rackHttp",
                            description="rack mode also serves HTTP (the console and every "
                                        "route) on host:port")
    shutdown_grace_period: int = Field(30_000, alias="shutdownGracePeriod", ge=0)
    intra_op_threads: int = Field(0, alias="intraOpThreads", ge=0, description="0 = cores")
    inference_threads: int = Field(0, alias="inferenceThreads", ge=0,
                                   description="runs at once in the runtime; 0 = cores")
    dynamic_batching: bool = Field(True, alias="dynamicBatching")
    batch_parallelism: int = Field(0, alias="batchParallelism", ge=0,
                                   description="batches of one model in the runtime at once; "
                                               "0 = cores / intraOpThreads")
    inline_run_micros: int = Field(300, alias="inlineRunMicros", ge=0,
                                   description="models whose runs average less run on the "
                                               "event loop thread; 0 = never")
    inter_op_threads: int = Field(1, alias="interOpThreads", ge=1)
    default_top_k: int = Field(5, alias="defaultTopK", ge=1)
    request_id_window: int = Field(10_000, alias="requestIdWindow", ge=0,
                                   description="finished calls remembered by requestId")
    request_id_ttl: int = Field(600_000, alias="requestIdTtl", ge=1000,
                                description="ms a finished call's answer is kept")
    fetch_timeout: int = Field(30_000, alias="fetchTimeout", ge=100,
                               description="ms a model fetch waits for a peer, a block or "
                                           "an HTTP read before it fails")
    default_model: str | None = Field(None, alias="defaultModel",
                                      description="the language model of requests that name "
                                                  "none (the tokenizer routes)")

    @field_validator("memory_limit", "max_request_bytes", "max_string_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        if any(len(k) < 8 for k in value):
            raise ValueError("every API key must be at least 8 characters")
        return value

    @property
    def timeout_s(self) -> float:
        return self.inference_timeout / 1000.0


def _aliases() -> dict[str, str]:
    """camelCase key -> field name."""
    return {(f.alias or name): name for name, f in Settings.model_fields.items()}


def config_keys() -> list[str]:
    return sorted(_aliases())


def camel_to_upper_snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


def camel_to_kebab(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", key).lower()


def _is_list(key: str) -> bool:
    field = Settings.model_fields[_aliases()[key]]
    return get_origin(field.annotation) is list


def coerce_text(key: str, text: str) -> Any:
    """Turn an env/CLI string into the value the key expects (lists: JSON or commas)."""
    if _is_list(key):
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                return orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"config key '{key}': {text!r} is not a JSON list") from exc
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return text


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object of config keys")
    return data


def load_settings(
    config_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers and validate once, naming the source of any bad key."""
    environ = os.environ if environ is None else environ
    aliases = _aliases()
    layers: list[tuple[str, dict[str, Any]]] = []

    explicit = config_dir is not None
    directory = Path(config_dir) if config_dir is not None else Path("config")
    common = directory / "common.json"
    if common.is_file():
        layers.append((str(common), _read_file(common)))
    elif explicit:
        raise ConfigError(f"--config {directory}: no common.json there")

    env_layer: dict[str, Any] = {}
    by_env = {ENV_PREFIX + camel_to_upper_snake(k): k for k in aliases}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in by_env:
            raise ConfigError(f"environment variable {name}: no such config key")
        env_layer[by_env[name]] = coerce_text(by_env[name], text)
    layers.append(("environment", env_layer))
    layers.append(("command line", dict(overrides or {})))

    merged: dict[str, Any] = {}
    source: dict[str, str] = {}
    for origin, layer in layers:
        for key, value in layer.items():
            if key not in aliases:
                raise ConfigError(
                    f"{origin}: unknown config key '{key}' (known keys: {', '.join(config_keys())})"
                )
            merged[key] = value
            source[key] = origin
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            camel = Settings.model_fields[key].alias or key if key in Settings.model_fields else key
            problems.append(
                f"config key '{camel}' (from {source.get(camel, 'defaults')}): {err['msg']}"
            )
        raise ConfigError("; ".join(problems)) from exc
