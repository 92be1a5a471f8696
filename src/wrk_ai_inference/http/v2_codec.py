"""Open Inference Protocol (KServe v2 / Triton) tensors: JSON and the binary extension.

Binary tensors are the fast path: the body is the JSON header followed by raw
little-endian, row-major tensors, so a float input becomes a numpy view of the
request bytes with no parsing and no copy. Every length is checked before it
is used; a lie (a ``binary_data_size`` past the body, a shape that disagrees
with the data, a header length past the body) is ERR_INVALID_INPUT with a
message that says which.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..datatypes import V2_TO_NUMPY
from ..errors import InferenceError
from ..json_tensors import JsonNumbers
from ..models.spec import TensorSpec

HEADER = "inference-header-content-length"
_LE = {k: v.newbyteorder("<") if v.kind in "iuf" and v.itemsize > 1 else v
       for k, v in V2_TO_NUMPY.items()}
_NUMPY_TO_V2 = {np.dtype(v).str: k for k, v in _LE.items() if k != "BYTES"}
_U32 = struct.Struct("<I")


def _bad(message: str) -> InferenceError:
    return InferenceError("ERR_INVALID_INPUT", message)


def v2_datatype(arr: np.ndarray) -> str:
    if arr.dtype.kind in "OSU":
        return "BYTES"
    name = _NUMPY_TO_V2.get(arr.dtype.newbyteorder("<").str if arr.dtype.itemsize > 1
                            else arr.dtype.str)
    if name is None:
        raise InferenceError("ERR_INFERENCE_FAILED", f"output dtype {arr.dtype} has no v2 name")
    return name


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    request_id: str | None
    parameters: dict[str, Any]
    outputs: list[str] | None
    binary_outputs: set[str] = field(default_factory=set)
    all_binary: bool = False


def split_body(body: bytes, header_length: str | None) -> tuple[bytes | None, bytes]:
    """(JSON header bytes, binary section); header None means a raw single-tensor request."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise _bad(f"Inference-Header-Content-Length {header_length!r} is not a number"
                       ) from None
        if size < 0 or size > len(body):
            raise _bad(f"Inference-Header-Content-Length {size} is past the end of the "
                       f"{len(body)}-byte body")
        if size == 0:
            return None, body
        json_part, binary = body[:size], body[size:]
    return json_part, binary


def check_header(header: Any) -> dict[str, Any]:
    """The decoded JSON header, which must be an object."""
    if not isinstance(header, dict):
        raise InferenceError("ERR_INVALID_REQUEST", "the request must be a JSON object")
    return header


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) > 32
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in value)):
        raise _bad(f"input '{name}': shape must be a list of non-negative integers")
    return tuple(value)


def _decode_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _bad(f"input '{name}': BYTES element {len(out)} has a cut length prefix")
        (size,) = _U32.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise _bad(f"input '{name}': BYTES element {len(out)} says {size} bytes, past "
                       "the end of its data")
        out.append(raw[offset:offset + size])
        offset += size
    if len(out) != count:
        raise _bad(f"input '{name}': shape needs {count} BYTES elements, the data has "
                   f"{len(out)}")
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


def _decode_input(item: Any, model_inputs: dict[str, TensorSpec], binary: memoryview,
                  offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InferenceError("ERR_INVALID_REQUEST", "each input needs a name")
    name = item["name"]
    spec = model_inputs.get(name)
    if spec is None:
        raise _bad(f"unknown input '{name}'; the model's inputs are {sorted(model_inputs)}")
    datatype = item.get("datatype")
    if datatype not in V2_TO_NUMPY:
        raise _bad(f"input '{name}': datatype {datatype!r} is not a v2 datatype "
                   f"({', '.join(V2_TO_NUMPY)})")
    if datatype != spec.datatype:
        raise _bad(f"input '{name}' is {spec.datatype}; the request says {datatype}")
    shape = _shape(item.get("shape"), name)
    count = math.prod(shape)
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise InferenceError("ERR_INVALID_REQUEST", f"input '{name}': parameters must be an "
                             "object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise _bad(f"input '{name}': binary_data_size {size} runs past the end of the "
                       f"binary data ({len(binary) - offset} bytes left)")
        chunk = binary[offset:offset + size]
        offset += size
        if datatype == "BYTES":
            arr = _decode_bytes(bytes(chunk), count, name)
        else:
            dtype = _LE[datatype]
            if size != count * dtype.itemsize:
                raise _bad(f"input '{name}': shape {list(shape)} of {datatype} needs "
                           f"{count * dtype.itemsize} bytes, binary_data_size says {size}")
            arr = np.frombuffer(chunk, dtype=dtype)
            if dtype.byteorder == "<":
                arr = arr.astype(dtype.newbyteorder("="), copy=False)
        return name, arr.reshape(shape), offset
    if "data" not in item:
        raise _bad(f"input '{name}' has neither data nor binary_data_size")
    data = item["data"]
    try:
        if datatype == "BYTES":
            if isinstance(data, JsonNumbers):
                raise _bad(f"input '{name}': BYTES data must be strings")
            arr = np.array(data, dtype=object).reshape(-1)
        else:
            raw = data.array if isinstance(data, JsonNumbers) else np.asarray(data)
            if raw.dtype.kind not in "biuf":
                raise _bad(f"input '{name}': {datatype} data must be numbers")
            if datatype == "BOOL" and raw.dtype.kind != "b":
                raise _bad(f"input '{name}': BOOL data must be true/false")
            arr = raw.astype(V2_TO_NUMPY[datatype]).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _bad(f"input '{name}': data is not a regular list of {datatype}: "
                   f"{str(exc)[:100]}") from None
    if arr.size != count:
        raise _bad(f"input '{name}': shape {list(shape)} needs {count} elements, data has "
                   f"{arr.size}")
    return name, arr.reshape(shape), offset


def parse_infer(header: dict[str, Any] | None, binary: bytes,
                model_inputs: list[TensorSpec]) -> InferRequest:
    by_name = {t.name: t for t in model_inputs}
    if header is None:  # raw binary request: the body is the one input, batch 1
        if len(model_inputs) != 1 or model_inputs[0].datatype == "BYTES":
            raise _bad("a raw binary request needs a model with exactly one non-BYTES input")
        spec = model_inputs[0]
        dtype = _LE[spec.datatype]
        if len(binary) % dtype.itemsize:
            raise _bad(f"raw body of {len(binary)} bytes is not a whole number of "
                       f"{spec.datatype} elements")
        arr = np.frombuffer(binary, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
        fixed = [d for d in spec.shape if d != -1]
        arr = arr.reshape([1 if d == -1 else d for d in spec.shape[:1]] + [-1]
                          if spec.shape and not fixed else [1, *spec.shape[1:]]
                          if spec.has_batch_dim else spec.shape)
        return InferRequest({spec.name: arr}, None, {}, None, all_binary=True)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferenceError("ERR_INVALID_REQUEST", "'inputs' must be a non-empty list")
    view = memoryview(binary)
    offset = 0
    decoded: dict[str, np.ndarray] = {}
    for item in inputs:
        name, arr, offset = _decode_input(item, by_name, view, offset)
        if name in decoded:
            raise _bad(f"input '{name}' is given twice")
        decoded[name] = arr
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InferenceError("ERR_INVALID_REQUEST", "parameters must be an object")
    wanted: list[str] | None = None
    binary_outputs: set[str] = set()
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise InferenceError("ERR_INVALID_REQUEST", "'outputs' must be a list of {name}")
        wanted = [o["name"] for o in outputs]
        binary_outputs = {o["name"] for o in outputs
                          if isinstance(o.get("parameters"), dict)
                          and o["parameters"].get("binary_data") is True}
    request_id = header.get("id")
    return InferRequest(decoded, request_id if isinstance(request_id, str) else None,
                        parameters, wanted, binary_outputs,
                        all_binary=parameters.get("binary_data_output") is True)


def _encode_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for value in arr.reshape(-1):
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(_U32.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_response(model: str, version: str, request: InferRequest,
                    outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """(body, headers): JSON, or JSON header + binary tensors when any output asks for it."""
    described = []
    blobs = []
    for name, arr in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr),
                                 "shape": list(arr.shape)}
        if request.all_binary or name in request.binary_outputs:
            blob = _encode_bytes(arr) if entry["datatype"] == "BYTES" else \
                np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif entry["datatype"] == "BYTES":
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                             for v in arr.reshape(-1).tolist()]
        else:
            entry["data"] = np.ascontiguousarray(arr).reshape(-1)
        described.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version,
                            "outputs": described}
    if request.request_id is not None:
        head["id"] = request.request_id
    json_part = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return json_part, {"content-type": "application/json"}
    return json_part + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(json_part)),
    }
