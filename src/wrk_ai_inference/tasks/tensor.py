"""Task ``tensor``: JSON in -> typed tensors, the model's outputs as they are out.

Preprocessing is strict on purpose: a float where an integer is expected, a
ragged list, a wrong shape or a missing input is refused with a message that
says what the model expects, because a silently truncated input gives a wrong
answer that nobody notices. Other tensor tasks (classification) subclass it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..datatypes import numpy_dtype
from ..errors import InferenceError
from ..json_tensors import JsonNumbers
from ..models.spec import ModelSpec, TensorSpec
from ..runtimes.base import Tensors
from .base import Limits, Task, bad

_NUMERIC_KINDS = {"b", "i", "u", "f"}


def describe(spec: TensorSpec) -> str:
    return f"'{spec.name}' ({spec.datatype}, shape {spec.shape})"


def _strings(spec: TensorSpec, value: Any, max_bytes: int) -> np.ndarray:
    """A BYTES input: strings (or UTF-8 bytes) in, an object array of str out."""
    arr = value if isinstance(value, np.ndarray) else np.array(value, dtype=object)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    if arr.dtype.kind != "O":
        raise bad(f"input {describe(spec)} must hold strings", input=spec.name)
    flat = arr.reshape(-1)
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                flat[i] = item.decode("utf-8")
            except UnicodeDecodeError:
                raise bad(f"input {describe(spec)} element {i} is not UTF-8",
                           input=spec.name) from None
        elif not isinstance(item, str):
            raise bad(f"input {describe(spec)} must hold only strings; element {i} is "
                       f"{type(item).__name__}", input=spec.name)
        if len(flat[i]) * 4 > max_bytes and len(flat[i].encode("utf-8")) > max_bytes:
            raise bad(f"input {describe(spec)} element {i} is longer than maxStringBytes "
                       f"({max_bytes} bytes)", input=spec.name, limit=max_bytes)
    return arr


def _to_array(spec: TensorSpec, value: Any, max_string_bytes: int) -> np.ndarray:
    """The input as a typed array of the shape the model takes (a batch axis added to a
    lone sample), its shape checked once, before any conversion of numbers."""
    if spec.datatype == "BYTES":
        return _check_shape(spec, _strings(spec, value, max_string_bytes))
    if isinstance(value, np.ndarray):  # already typed (binary v2 tensors): no copy
        if value.dtype != numpy_dtype(spec.datatype):
            raise bad(f"input {describe(spec)} got {value.dtype} data", input=spec.name)
        return _check_shape(spec, value)
    if isinstance(value, dict | str | bytes) or value is None:
        raise bad(f"input {describe(spec)} must be a number or a nested list of numbers, "
                   f"got {type(value).__name__}", input=spec.name)
    if isinstance(value, JsonNumbers):  # decoded from JSON as np.asarray would have
        raw = value.array
    else:
        try:
            raw = np.asarray(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise bad(f"input {describe(spec)} is not a regular nested list of numbers "
                       f"(ragged or mixed rows): {str(exc)[:120]}", input=spec.name) from exc
    raw = _check_shape(spec, raw)  # before any conversion: a wrong shape costs nothing
    if raw.dtype.kind not in _NUMERIC_KINDS:
        raise bad(f"input {describe(spec)} must hold only numbers (found {raw.dtype.kind!r}-kind "
                   "values such as strings, nulls or objects)", input=spec.name)
    target = numpy_dtype(spec.datatype)
    if target.kind in "iu":
        if raw.dtype.kind == "f" and not (np.all(np.isfinite(raw))
                                          and np.all(raw == np.round(raw))):
            raise bad(f"input {describe(spec)} needs whole numbers; got fractions",
                       input=spec.name)
        if raw.size and raw.dtype.kind != "b":
            info = np.iinfo(target)  # type: ignore[type-var]
            lo, hi = raw.min(), raw.max()
            if lo < info.min or hi > info.max:
                raise bad(f"input {describe(spec)} values must lie in [{info.min}, {info.max}]",
                           input=spec.name)
    elif target.kind == "b" and raw.dtype.kind != "b" and raw.size and not np.all(
        (raw == 0) | (raw == 1)
    ):
        raise bad(f"input {describe(spec)} is boolean: use true/false or 0/1", input=spec.name)
    elif target.kind == "f" and raw.dtype.kind == "f" and target.itemsize < raw.dtype.itemsize:
        limit = float(np.finfo(target).max)  # type: ignore[type-var]
        # one reduction instead of min and max: if the sum of squares stays within
        # limit**2, no value overflows (only a NaN or a huge sum gets the exact check)
        if not raw.size or np.vdot(raw, raw) <= limit * limit:
            return np.ascontiguousarray(raw, dtype=target)
        with np.errstate(over="ignore"):  # overflow is detected just below
            arr = np.ascontiguousarray(raw, dtype=target)
        if not np.isfinite(arr).all() and np.any(np.isinf(arr) & np.isfinite(raw)):
            raise bad(f"input {describe(spec)} has values too large for {spec.datatype}",
                       input=spec.name)
        return arr
    return np.ascontiguousarray(raw, dtype=target)


def _check_shape(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    expected = spec.shape
    if arr.ndim == len(expected) - 1 and spec.has_batch_dim:
        arr = arr[np.newaxis]  # one sample sent without its batch axis
    if arr.ndim != len(expected) or any(
        e != -1 and e != got for e, got in zip(expected, arr.shape, strict=True)
    ):
        raise bad(f"input {describe(spec)} got shape {list(arr.shape)}; -1 marks a free "
                   "dimension", input=spec.name, expected=expected, got=list(arr.shape))
    if arr.size == 0:
        raise bad(f"input {describe(spec)} is empty", input=spec.name)
    return arr


def tensor_inputs(inputs: list[TensorSpec], input_data: Any, max_elements: int,
                  max_string_bytes: int = 1 << 20) -> Tensors:
    """``{name: nested list}``, or a bare nested list for a one-input model, to typed arrays."""
    names = [t.name for t in inputs]
    if isinstance(input_data, dict):
        missing = [n for n in names if n not in input_data]
        unknown = [k for k in input_data if k not in names]
        if missing or unknown:
            raise bad(f"the model's inputs are {names}; missing {missing}, unknown {unknown[:10]}",
                       expected=names)
        values = input_data
    elif isinstance(input_data, list | JsonNumbers) and len(inputs) == 1:
        values = {names[0]: input_data}
    else:
        shown = ("a bare list" if isinstance(input_data, list | JsonNumbers)
                 else type(input_data).__name__)
        raise bad(f"inputData must be an object {{name: nested list}} with the inputs {names}"
                   f" (a bare list only works for one-input models); got {shown}",
                   expected=names)
    feeds: Tensors = {}
    total = 0
    for spec in inputs:
        arr = _to_array(spec, values[spec.name], max_string_bytes)
        total += arr.size
        if total > max_elements:
            raise bad(f"the inputs hold more than maxTensorElements ({max_elements}) elements",
                       limit=max_elements)
        feeds[spec.name] = arr
    batch = {a.shape[0] for s, a in zip(inputs, feeds.values(), strict=True) if s.has_batch_dim}
    if len(batch) > 1:
        raise bad(f"inputs disagree on the batch size: {sorted(batch)}")
    return feeds


def jsonable(arr: np.ndarray) -> Any:
    """Arrays orjson can write directly stay arrays; strings become (nested) lists."""
    if arr.dtype.kind in "OSU":
        flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in arr.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist()
    return np.ascontiguousarray(arr)




class TensorTask(Task):
    """Tensors in and out; the input checks are cheap, so they run before admission."""

    name = "tensor"

    def __init__(self, spec: ModelSpec, labels: list[str] | None = None) -> None:
        self.spec = spec
        self.labels = labels

    def inputs(self, model_inputs: list[TensorSpec], data: Any, limits: Limits) -> Tensors:
        return tensor_inputs(model_inputs, data, limits.max_elements, limits.max_string_bytes)

    def outputs(self, outputs: Tensors, feeds: Tensors, top_k: int,
                wanted: list[str] | None = None) -> dict[str, Any]:
        shown = select_outputs(outputs, wanted)
        return {"outputs": {k: jsonable(v) for k, v in shown.items()}}


def select_outputs(outputs: Tensors, wanted: list[str] | None) -> Tensors:
    """The outputs ``options.outputs`` names (all when None), refusing unknown names."""
    if wanted is None:
        return outputs
    unknown = [w for w in wanted if w not in outputs]
    if unknown:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"options.outputs names {unknown}, not outputs of the model "
                             f"({list(outputs)})")
    return {k: outputs[k] for k in wanted}
