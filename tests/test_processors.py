"""Input validation and the caps that bound what one request may ask of the worker."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.models.spec import ModelSpec, TensorSpec
from wrk_ai_inference.tasks import classification as processors
from wrk_ai_inference.tasks.classification import classify
from wrk_ai_inference.tasks.tensor import tensor_inputs

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
    refused(FLOATS, [[1e39, -1e39, 0, 0]], "too large for FP32")  # they cancel in a sum
    refused(FLOATS, [[1e300, 1e300, 0, 0]], "too large for FP32")  # squares overflow
    # the largest float32 and its neighbours that still round to it are not too large
    edge = float(np.finfo(np.float32).max)
    assert tensor_inputs(FLOATS, [[edge, -edge, 1e38, 0.5]], 100)["x"].dtype == np.float32
    refused(FLOATS, [[True, "1", 0, 0]], "only numbers")
    refused(FLOATS, [[0, 0, 0, 0], [0, 0, 0]], "ragged")
    assert tensor_inputs(FLOATS, [0, 1, 2, 3], 100)["x"].shape == (1, 4)  # batch axis added


def test_typed_arrays_pass_without_copy_but_dtype_must_match() -> None:
    arr = np.zeros((2, 4), np.float32)
    assert tensor_inputs(FLOATS, {"x": arr}, 100)["x"] is arr
    refused(FLOATS, {"x": np.zeros((2, 4), np.float64)}, "float64")


def _classification(softmax: bool | None) -> ModelSpec:
    return ModelSpec.model_validate({
        "runtime": "onnx", "file": "m.onnx", "task": "classification",
        "postprocess": {"output": "y", **({} if softmax is None else {"softmax": softmax})}})


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(1, 4), classes=st.integers(1, 16),
       softmax=st.sampled_from([None, True, False]), data=st.data())
def test_small_outputs_are_classified_as_the_numpy_path_does(
        rows: int, classes: int, softmax: bool | None, data: st.DataObject) -> None:
    """Outputs of a few classes take a plain-Python path; it must give the numpy path's
    answer: the same order (ties to the lower index), scores within 1e-12, the same
    softmax-or-not decision for the whole request, and numpy's answer for NaN or inf."""
    values = st.one_of(st.floats(-30, 30), st.sampled_from([0.0, 0.25, 1.0, 2.0]),
                       st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    grid = data.draw(st.lists(st.lists(values, min_size=classes, max_size=classes),
                              min_size=rows, max_size=rows))
    made = data.draw(st.sampled_from(["none", "all", "first"]))  # rows that are probabilities
    if made != "none":
        grid = [[1.0 / classes] * classes if made == "all" or i == 0 else row
                for i, row in enumerate(grid)]
    outputs = {"y": np.asarray(grid, dtype=np.float32)}
    spec, top_k = _classification(softmax), data.draw(st.integers(1, classes + 2))
    with np.errstate(all="ignore"):  # numpy's path warns about the inf rows it is given
        small = classify(outputs, spec, None, top_k)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(processors, "_SMALL_SCORES", 0)
            reference = classify(outputs, spec, None, top_k)
    assert [[p["label"] for p in row] for row in small["predictions"]] == \
        [[p["label"] for p in row] for row in reference["predictions"]]
    np.testing.assert_allclose([[p["score"] for p in row] for row in small["predictions"]],
                               [[p["score"] for p in row] for row in reference["predictions"]],
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(small["confidence"], reference["confidence"], rtol=1e-12)
    assert small["probabilities"].dtype == reference["probabilities"].dtype == np.float32
    np.testing.assert_allclose(small["probabilities"], reference["probabilities"], rtol=1e-6)
