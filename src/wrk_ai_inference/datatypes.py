"""Tensor datatypes: Open Inference Protocol names, numpy dtypes and ONNX type strings.

The v2 names (``FP32``, ``INT64``...) are what model.json and every API speak;
runtimes translate from their own spelling once, at load time.
"""

from __future__ import annotations

import numpy as np

V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise ValueError(
            f"unknown datatype {datatype!r}; use one of {', '.join(V2_TO_NUMPY)}"
        ) from None


def is_integer(datatype: str) -> bool:
    return datatype.startswith(("INT", "UINT"))


def is_float(datatype: str) -> bool:
    return datatype.startswith("FP")
