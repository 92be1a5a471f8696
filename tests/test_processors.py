"""Input validation and the caps that bound what one request may ask of the worker."""

from __future__ import annotations

import numpy as np
import pytest

from wrk_ai_inference.engine.processors import tensor_inputs
from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.models.spec import TensorSpec

FLOATS = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
INTS = [TensorSpec(name="n", datatype="INT8", shape=[-1])]
TEXT = [TensorSpec(name="t", datatype="BYTES", shape=[-1])]


def refused(inputs: list[TensorSpec], data: object, words: str, **caps: int) -> None:
    with pytest.raises(InferenceError) as exc:
        tensor_inputs(inputs, data, caps.get("elements", 10**6), caps.get("strings", 1 << 20))
    assert exc.value.code == "ERR_INVALID_INPUT" and words in exc.value.message, \
        exc.value.message


def test_element_cap() -> None:
    tensor_inputs(FLOATS, [[0.0] * 4] * 25, max_elements=100)
    refused(FLOATS, [[0.0] * 4] * 26, "maxTensorElements (100)", elements=100)


def test_string_cap_and_strings_only() -> None:
    out = tensor_inputs(TEXT, ["ok", "\u00fc" * 5], 100, max_string_bytes=10)
    assert out["t"].dtype == object and out["t"].tolist() == ["ok", "\u00fc" * 5]
    refused(TEXT, ["\u00fc" * 6], "maxStringBytes (10 bytes)", strings=10)  # 12 UTF-8 bytes
    refused(TEXT, ["a", 3], "only strings")
    refused(TEXT, [b"\xff"], "not UTF-8")


def test_numbers_are_checked_not_coerced() -> None:
    refused(INTS, [1, 2.5], "whole numbers")
    refused(INTS, [1, 300], "[-128, 127]")
    refused(FLOATS, [[1e39, 0, 0, 0]], "too large for FP32")
    refused(FLOATS, [[True, "1", 0, 0]], "only numbers")
    refused(FLOATS, [[0, 0, 0, 0], [0, 0, 0]], "ragged")
    assert tensor_inputs(FLOATS, [0, 1, 2, 3], 100)["x"].shape == (1, 4)  # batch axis added


def test_typed_arrays_pass_without_copy_but_dtype_must_match() -> None:
    arr = np.zeros((2, 4), np.float32)
    assert tensor_inputs(FLOATS, {"x": arr}, 100)["x"] is arr
    refused(FLOATS, {"x": np.zeros((2, 4), np.float64)}, "float64")
