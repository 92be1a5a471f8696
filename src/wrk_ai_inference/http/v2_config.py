"""Triton's model configuration for the Open Inference Protocol routes.

Triton's tools (``tritonclient``'s ``get_model_config``, perf_analyzer, model
analyzer) read ``GET /v2/models/{m}/config`` and may pass a changed copy back in
``POST /v2/repository/models/{m}/load`` as ``parameters.config``. This module
renders our model in Triton's shape and turns a config override into what the
model manager can apply: ``max_batch_size`` and the dynamic batching delay. Any
other change is refused with a message that says "failed to load", never ignored.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..errors import InferenceError
from ..models.manager import ModelEntry
from ..models.spec import TensorSpec

#: v2 datatypes -> Triton's model-configuration type names
_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
          "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
          "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
          "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
          "BYTES": "TYPE_STRING", "BF16": "TYPE_BF16"}
_PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime"),
              "pytorch": ("pytorch_libtorch", "pytorch"), "torch": ("pytorch_libtorch", "pytorch")}


def _refused(model: str, why: str) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", f"failed to load '{model}': {why}")


def batches(inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch: int) -> bool:
    return max_batch > 0 and all(t.has_batch_dim for t in (*inputs, *outputs))


def model_config(entry: ModelEntry, inputs: list[TensorSpec], outputs: list[TensorSpec]
                 ) -> dict[str, Any]:
    """The model in Triton's model-configuration shape (dims without the batch axis when
    ``max_batch_size`` > 0, as Triton writes them)."""
    spec = entry.spec
    assert spec is not None
    platform, backend = _PLATFORMS.get(spec.runtime, (spec.runtime, spec.runtime))
    batching = batches(inputs, outputs, spec.max_batch_size)

    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        out = []
        for t in specs:
            item: dict[str, Any] = {"name": t.name,
                                    "data_type": _TYPES.get(t.datatype, t.datatype),
                                    "dims": t.shape[1:] if batching else t.shape}
            if not item["dims"]:  # one value per batch row: Triton's [1] reshaped to []
                item["dims"], item["reshape"] = [1], {"shape": []}
            out.append(item)
        return out

    config: dict[str, Any] = {
        "name": entry.id, "platform": platform, "backend": backend,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": spec.max_batch_size if batching else 0,
        "input": tensors(inputs), "output": tensors(outputs),
    }
    if batching and spec.max_batch_size > 1:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(spec.batch_delay_ms * 1000)}
    return config


def overrides(model: str, parameters: Any, current: dict[str, Any]) -> dict[str, Any] | None:
    """The ModelSpec fields a load request's ``parameters`` change, or None without a
    ``config``. ``current`` is what ``model_config`` says now: fields equal to it are
    accepted as they are, so a config read from the config route can be sent back."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InferenceError("ERR_INVALID_REQUEST", "parameters must be an object")
    files = [k for k in parameters if k.startswith("file:")]
    if files:
        raise _refused(model, f"model files in the request ({files[0]}, ...) are not "
                       "supported; put the model in the worker's repository")
    unknown = [k for k in parameters if k != "config"]
    if unknown:
        raise _refused(model, f"unknown load parameters {unknown}")
    raw = parameters.get("config")
    if raw is None:
        return None
    try:
        config = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError as exc:
        raise _refused(model, f"config is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise _refused(model, "config must be a JSON object")
    changes: dict[str, Any] = {}
    for key, given in config.items():
        value = given if key in _TEXT_FIELDS else _proto_ints(given)
        if key == "max_batch_size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _refused(model, "max_batch_size must be a whole number >= 0")
            if value > 0 and current["max_batch_size"] == 0:
                raise _refused(model, "its inputs and outputs have no free batch "
                               "dimension, so max_batch_size must be 0")
            changes["max_batch_size"] = value
        elif key == "dynamic_batching":
            changes.update(_dynamic_batching(model, value))
        elif key in ("input", "output"):
            if not _same_tensors(value, current[key]):
                raise _refused(model, f"the config's {key} differs from the model's; only "
                               "max_batch_size and dynamic_batching can be changed")
        elif key in current and value == current[key]:
            continue
        elif key in ("name", "platform", "backend"):
            raise _refused(model, f"config {key} {value!r} is not the model's "
                           f"({current[key]!r})")
        else:
            raise _refused(model, f"config field {key!r} cannot be applied by this worker; "
                           "only max_batch_size and dynamic_batching can be changed")
    return changes


def _dynamic_batching(model: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _refused(model, "dynamic_batching must be an object")
    unknown = [k for k in value if k != "max_queue_delay_microseconds"]
    if unknown:
        raise _refused(model, f"dynamic_batching fields {unknown} cannot be applied; only "
                       "max_queue_delay_microseconds can")
    delay = value.get("max_queue_delay_microseconds", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 10_000_000:
        raise _refused(model, "max_queue_delay_microseconds must be a whole number in "
                       "[0, 10000000]")
    return {"batch_delay_ms": delay / 1000}


def _same_tensors(given: Any, ours: list[dict[str, Any]]) -> bool:
    if not isinstance(given, list) or len(given) != len(ours):
        return False
    by_name = {t["name"]: t for t in ours}
    for item in given:
        if not isinstance(item, dict) or item.get("name") not in by_name:
            return False
        mine = by_name[item["name"]]
        if item.get("data_type", mine["data_type"]) != mine["data_type"]:
            return False
        if item.get("dims", mine["dims"]) != mine["dims"]:
            return False
    return True


_WHOLE = re.compile(r"^-?[0-9]{1,19}$")
_TEXT_FIELDS = {"name", "platform", "backend"}  # text even when it reads as a number


def _proto_ints(value: Any) -> Any:
    """``value`` with whole numbers written as text made numbers again: protobuf's JSON
    mapping writes 64-bit integers (``max_batch_size``, ``dims``, delays, counts) as
    strings, and Triton accepts either form."""
    if isinstance(value, str) and _WHOLE.match(value):
        return int(value)
    if isinstance(value, dict):
        return {k: v if k in _TEXT_FIELDS else _proto_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_proto_ints(v) for v in value]
    return value
