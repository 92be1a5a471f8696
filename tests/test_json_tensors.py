"""Number arrays decoded straight into numpy must read exactly as orjson + np.asarray."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wrk_ai_inference import json_tensors
from wrk_ai_inference.json_tensors import JsonNumbers

NUMBERS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -0.0, 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
)
ODD = st.one_of(st.booleans(), st.none(), st.text(max_size=3), st.just([]), st.just([1.5]),
                st.just({"a": 1}))


@st.composite
def input_data(draw: st.DrawFn) -> Any:
    """Regular 1-D/2-D arrays mostly, and each way of being irregular now and then."""
    rows, width = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    numbers = st.one_of(st.integers(-5, 5), NUMBERS) if draw(st.booleans()) else NUMBERS
    grid: list[Any] = [draw(st.lists(numbers, min_size=width, max_size=width))
                       for _ in range(rows)]
    spoil = draw(st.sampled_from(["none"] * 6 + ["leaf", "boxed", "ragged", "shift", "row",
                                                 "flat", "deep"]))
    if spoil in ("leaf", "boxed"):  # boxed: [x] in place of x keeps the count of numbers
        i, j = draw(st.integers(0, rows - 1)), draw(st.integers(0, width - 1))
        grid[i][j] = draw(ODD) if spoil == "leaf" else [grid[i][j]]
    elif spoil == "shift" and rows > 2:  # ragged, the first row and the count unchanged
        grid[1].append(grid[-1].pop())
    elif spoil == "ragged":
        grid[-1] = grid[-1][:-1] + ([] if width > 1 else [1, 2])
    elif spoil == "row":
        grid[-1] = draw(NUMBERS)
    elif spoil == "deep":
        grid = [grid]
    shape = draw(st.sampled_from(["2d", "1d", "named"]))
    if spoil == "flat" or shape == "1d":
        return [v for row in grid for v in (row if isinstance(row, list) else [row])]
    if shape == "named":
        return {"x": grid, "y": draw(st.lists(numbers, min_size=1, max_size=3))}
    return grid


def same(got: Any, want: Any) -> None:
    if isinstance(got, JsonNumbers):
        expected = np.asarray(want)
        assert got.array.dtype == expected.dtype and got.array.shape == expected.shape
        assert got.array.tobytes() == expected.tobytes()  # bit for bit, -0.0 included
    elif isinstance(got, dict):
        assert isinstance(want, dict) and list(got) == list(want)
        for key in got:
            same(got[key], want[key])
    else:
        assert got == want and type(got) is type(want)


@settings(max_examples=400, deadline=None)
@given(data=input_data(), options=st.one_of(st.none(), st.just({"topK": 2}),
                                            st.just({"outputs": ["[x]"]})))
def test_decoded_arrays_are_what_orjson_and_numpy_give(data: Any, options: Any) -> None:
    body = orjson.dumps({"inputData": data, **({} if options is None else
                                                {"options": options})})
    same(json_tensors.loads(body), orjson.loads(body))


def test_the_fast_path_is_taken_for_regular_numbers_and_not_for_the_rest() -> None:
    fast = json_tensors.loads(b'{"inputData": [[1.5, 2], [3, 4e2]], "options": {"topK": 1}}')
    assert isinstance(fast["inputData"], JsonNumbers)
    assert fast["inputData"].array.dtype == np.float64 and fast["options"] == {"topK": 1}
    ints = json_tensors.loads(b' {"inputData" : {"ids": [1, 2, 3]}} ')
    assert ints["inputData"]["ids"].array.dtype == np.int64
    for body in (b'{"inputData": [[1, 2], [3, [4]]]}',  # a nested one-element list
                 b'{"inputData": [[1, 2], [3], [4, 5, 6]]}',  # ragged, same count
                 b'{"inputData": [true, 1]}', b'{"inputData": "text"}',
                 b'{"inputData": [1], "inputData": [2]}',  # orjson keeps the last
                 b'{"inputData": [9223372036854775808, 1]}',
                 b'{"inputData": {"\\u0000": [1.5]}}'):  # a key simdjson cannot look up
        got = json_tensors.loads(body)
        assert got == orjson.loads(body) and not isinstance(got["inputData"], JsonNumbers)


@pytest.mark.parametrize("body", [b"", b"{", b'{"inputData": [1e400]}', b"[1, 2", b"NaN"])
def test_invalid_json_raises_orjsons_error(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError) as ours:
        json_tensors.loads(body)
    with pytest.raises(orjson.JSONDecodeError) as theirs:
        orjson.loads(body)
    assert str(ours.value) == str(theirs.value)


def test_large_bodies_count_each_value_once() -> None:
    """The budget is maxTensorElements values: an irregular array of n values plus the
    array itself fits a budget of n + 1, and not n."""
    from wrk_ai_inference.errors import InferenceError
    from wrk_ai_inference.json_tensors import loads_large

    values = 5000
    body = b'{"inputData": [' + b'"a",' * (values - 1) + b'"a"]}'  # not numbers: walked
    assert len(loads_large(body, values + 1)["inputData"]) == values
    with pytest.raises(InferenceError, match="maxTensorElements"):
        loads_large(body, values)
    regular = b'{"inputData": [' + b"1," * (values - 1) + b"1]}"  # numbers: counted whole
    assert loads_large(regular, values)["inputData"].array.size == values
