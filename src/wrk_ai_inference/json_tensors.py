"""Request bodies whose number arrays are decoded straight into numpy, not into lists.

``orjson.loads`` makes one Python float per number and numpy then reads them back:
for a 1,024-feature row that is most of the event loop's time per request, time the
runtime threads cannot have. Here simdjson parses the body and copies a regular 1-D or
2-D array of numbers (the usual ``inputData``) into an array in one call.

The answer is always the one ``orjson.loads`` + ``np.asarray`` would give: int64 when
every number is whole, float64 otherwise, the same shape. Anything else (strings,
ragged or deeper nesting, booleans, numbers beyond 64 bits, duplicate keys, invalid
JSON) takes the plain orjson path, so its errors read exactly as before.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import orjson
import simdjson

#: Bodies larger than this take the orjson path: the parser keeps buffers as large as
#: the largest document it has seen.
MAX_FAST_BYTES = 4 << 20

_INT64_LIMIT = 2.0**63


class JsonNumbers:
    """A JSON array of numbers, already decoded as ``np.asarray`` would decode it."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def tolist(self) -> Any:
        return self.array.tolist()


class _NotFast(Exception):
    """This body needs the orjson path."""


_local = threading.local()


def _parser() -> simdjson.Parser:
    parser: simdjson.Parser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def loads(body: bytes) -> Any:
    """``orjson.loads(body)``, with the ``inputData`` number arrays as ``JsonNumbers``.

    Raises ``orjson.JSONDecodeError`` for invalid JSON, as orjson does.
    """
    if len(body) <= MAX_FAST_BYTES:
        try:
            return _fast(body)
        except RuntimeError:  # the parser still holds a document: use a fresh one
            _local.parser = None
        except Exception:  # anything else (not JSON, keys simdjson cannot look up): orjson
            pass
    return orjson.loads(body)


def plain(value: Any) -> Any:
    """Lists again, for consumers that want what orjson gives (task pipelines)."""
    if isinstance(value, JsonNumbers):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _fast(body: bytes) -> dict[str, Any]:
    doc = _parser().parse(body)
    if not isinstance(doc, simdjson.Object):
        raise _NotFast
    keys = list(doc.keys())
    if len(keys) != len(set(keys)) or "inputData" not in keys:
        raise _NotFast  # duplicate keys: orjson keeps the last one, simdjson the first
    brackets = 0
    out: dict[str, Any] = {}
    for key in keys:
        value = doc[key]
        if key == "inputData":
            if isinstance(value, simdjson.Array):
                array, brackets = _numbers(value)
                out[key] = JsonNumbers(array)
            elif isinstance(value, simdjson.Object):
                inputs = {}
                for name in value:
                    item = value[name]
                    if name in inputs or not isinstance(item, simdjson.Array):
                        raise _NotFast
                    array, seen = _numbers(item)
                    inputs[name] = JsonNumbers(array)
                    brackets += seen
                out[key] = inputs
            else:
                raise _NotFast
        else:
            out[key] = _python(value)
    # as_buffer flattens nested arrays: the brackets in the whole body prove that no
    # number of inputData is itself an array (other arrays in the body send us back)
    if body.count(b"[") != brackets:
        raise _NotFast
    return out


def _numbers(value: simdjson.Array) -> tuple[np.ndarray, int]:
    """The array as np.asarray would make it, and the brackets it is written with."""
    rows = len(value)
    if rows == 0:
        raise _NotFast
    first: Any = value[0]
    leaf: Any
    shape: tuple[int, ...]
    if isinstance(first, simdjson.Array):
        width = len(first)
        if width == 0:
            raise _NotFast
        for row in value:
            if not isinstance(row, simdjson.Array) or len(row) != width:
                raise _NotFast  # ragged, or rows mixed with numbers
        leaf, shape, brackets = first[0], (rows, width), 1 + rows
    else:
        leaf, shape, brackets = first, (rows,), 1
    if type(leaf) is int:  # not isinstance: a bool is an int too, and must not pass
        try:
            flat = np.frombuffer(value.as_buffer(of_type="i"), dtype=np.int64)
        except (TypeError, ValueError):  # a float among them, or beyond int64
            flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
            if flat.size and float(np.abs(flat).max()) >= _INT64_LIMIT:
                raise _NotFast from None  # numpy's answer depends on the exact ints
    elif type(leaf) is float:
        flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
    else:
        raise _NotFast
    if flat.size != math.prod(shape):
        raise _NotFast
    return flat.reshape(shape), brackets


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
