"""Request bodies whose number arrays are decoded straight into numpy, not into lists.

``orjson.loads`` makes one Python float per number and numpy then reads them back:
for a 1,024-feature row that is most of the event loop's time per request, time the
runtime threads cannot have. Here simdjson parses the body and copies a regular 1-D or
2-D array of numbers (the usual ``inputData``) into an array in one call.

The answer is always the one ``orjson.loads`` + ``np.asarray`` would give: int64 when
every number is whole, float64 otherwise, the same shape. Anything else (strings,
ragged or deeper nesting, booleans, numbers beyond 64 bits, duplicate keys, invalid
JSON) takes the plain orjson path, so its errors read exactly as before.

Bodies over ``LARGE_BYTES`` are decoded by ``loads_large`` in a helper process (see
``bodies.py``), with every value counted against an element budget before it is made.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import simdjson

from .errors import InferenceError

#: Bodies larger than this take the orjson path: the parser keeps buffers as large as
#: the largest document it has seen.
MAX_FAST_BYTES = 4 << 20

_INT64_LIMIT = 2.0**63

#: Bodies above this size are decoded off the event loop, by ``loads_large``.
LARGE_BYTES = 1 << 20

#: Arrays longer than this anywhere in a large body become ``JsonNumbers`` when regular.
_LONG = 1 << 12

#: simdjson finds an object's value by key with a linear scan, so objects with more keys
#: than this are never walked key by key (that would take time quadratic in their size).
FEW_KEYS = 64


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


def map_numbers(value: Any, change: Callable[[Any], Any],
                kinds: tuple[type, ...] = (JsonNumbers,)) -> Any:
    """``value`` with every leaf of ``kinds`` (``JsonNumbers`` by default) anywhere in its
    dicts and lists replaced by ``change(leaf)``; lists of plain values are kept as they are."""
    if isinstance(value, kinds):
        return change(value)
    if isinstance(value, dict):
        return {k: map_numbers(v, change, kinds) for k, v in value.items()}
    if isinstance(value, list) and any(isinstance(v, (dict, list, *kinds)) for v in value):
        return [map_numbers(v, change, kinds) for v in value]
    return value


def arrays(value: Any) -> Any:
    """``JsonNumbers`` anywhere in ``value`` as plain numpy arrays (orjson writes those)."""
    return map_numbers(value, lambda numbers: numbers.array)


def _fast(body: bytes) -> dict[str, Any]:
    doc = _parser().parse(body)
    if not isinstance(doc, simdjson.Object):
        raise _NotFast
    if len(doc) > FEW_KEYS:
        raise _NotFast  # each doc[key] below is a scan: many keys would be quadratic
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
                if len(value) > FEW_KEYS:
                    raise _NotFast
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


def _over_budget(limit: int) -> InferenceError:
    return InferenceError("ERR_INVALID_INPUT", f"the request holds more than "
                          f"maxTensorElements ({limit}) values", {"limit": limit})


#: Values a large body may hold outside regular arrays of numbers: each becomes a Python
#: object that must travel back from the decoding process and be rebuilt there, which
#: holds the GIL; regular arrays travel as raw memory. Ragged number lists are refused by
#: validation anyway, and strings for text or image models are far fewer.
MAX_PLAIN_VALUES = 1 << 18


class _Budget:
    """Counts the values a large body holds, and stops the decoding once past ``limit``
    (or past ``MAX_PLAIN_VALUES`` values outside regular arrays of numbers)."""

    __slots__ = ("left", "limit", "plain_left")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.plain_left = MAX_PLAIN_VALUES

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise _over_budget(self.limit)

    def plain(self) -> None:
        self.take(1)
        self.plain_left -= 1
        self.room(0)

    def room(self, count: int) -> None:
        """Refuse now when ``count`` more plain values cannot fit."""
        if self.plain_left < count:
            raise InferenceError(
                "ERR_INVALID_INPUT", f"a request body over {LARGE_BYTES} bytes may hold at "
                f"most {MAX_PLAIN_VALUES} values outside regular arrays of numbers",
                {"limit": MAX_PLAIN_VALUES})


def loads_large(body: bytes, max_elements: int) -> Any:
    """``loads`` for big bodies (in a helper process: the parse holds the GIL throughout).

    Raises InferenceError: ERR_INVALID_REQUEST for a body simdjson cannot parse,
    ERR_INVALID_INPUT as soon as the body holds more than ``max_elements`` values (each
    array's length is known before its values are made).
    """
    try:
        doc = simdjson.Parser().parse(body)  # a fresh parser: its buffers go with it
    except (ValueError, RuntimeError) as exc:
        raise InferenceError("ERR_INVALID_REQUEST",
                             f"request body is not valid JSON: {str(exc)[:200]}") from None
    budget = _Budget(max_elements)
    if not isinstance(doc, simdjson.Object) or len(doc) > FEW_KEYS:
        return _walk(doc, budget)
    out: dict[str, Any] = {}
    for key in doc:
        value = doc[key]
        if key == "inputData" and isinstance(value, simdjson.Array):
            out[key] = _numbers_large(value, budget)
        elif key == "inputData" and isinstance(value, simdjson.Object) \
                and len(value) <= FEW_KEYS:
            out[key] = {name: _numbers_large(item, budget)
                        if isinstance(item := value[name], simdjson.Array)
                        else _walk(item, budget) for name in value}
        else:
            out[key] = _walk(value, budget)
    return out


def _walk(value: Any, budget: _Budget) -> Any:
    """simdjson values to Python ones, each counted; a long regular array of numbers
    anywhere becomes ``JsonNumbers``."""
    if isinstance(value, simdjson.Array):
        if len(value) > _LONG and _shape_of(value) is not None:
            return _numbers_large(value, budget)
        return _walk_array(value, budget)
    if isinstance(value, simdjson.Object):
        if len(value) > FEW_KEYS:  # made whole by simdjson in one pass, then counted
            budget.room(len(value))
            return _counted(value.as_dict(), budget)
        budget.plain()
        return {key: _walk(value[key], budget) for key in value}
    budget.plain()
    return value


def _counted(value: Any, budget: _Budget) -> Any:
    """``value`` (plain Python, made by simdjson) once each value in it is counted."""
    stack = [value]
    while stack:
        item = stack.pop()
        budget.plain()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _walk_array(value: simdjson.Array, budget: _Budget) -> list[Any]:
    """An array that is not a regular array of numbers, walked value by value (each
    value counts itself, the array once)."""
    budget.plain()
    return [_walk(item, budget) for item in value]


def _shape_of(value: simdjson.Array) -> tuple[int, ...] | None:
    """The shape of a regular array of numbers, from its first elements; None otherwise."""
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, simdjson.Array):
        if len(probe) == 0:
            return None
        shape.append(len(probe))
        probe = probe[0]
    return tuple(shape) if type(probe) in (int, float) else None


def _numbers_large(value: simdjson.Array, budget: _Budget) -> Any:
    """A regular N-d array of numbers as ``JsonNumbers``; anything else walked as Python."""
    shape = _shape_of(value)
    if shape is None:
        return _walk_array(value, budget)
    budget.take(math.prod(shape))
    leaves: list[simdjson.Array] = []
    try:
        _collect(value, shape, 0, leaves)
    except _Ragged:
        budget.take(-math.prod(shape))
        return _walk_array(value, budget)
    parts: list[np.ndarray] = []
    for leaf in leaves:
        part = _leaf(leaf)
        if part is None:  # a string, bool, null or nested value among the numbers
            budget.take(-math.prod(shape))
            return _walk_array(value, budget)
        parts.append(part)
    floats = any(part.dtype.kind == "f" for part in parts)
    out = np.empty(math.prod(shape), dtype=np.float64 if floats else np.int64)
    width = shape[-1]
    for i, part in enumerate(parts):
        out[i * width:(i + 1) * width] = part
    return JsonNumbers(out.reshape(shape))


def _collect(value: simdjson.Array, shape: tuple[int, ...], depth: int,
             leaves: list[simdjson.Array]) -> None:
    """The innermost arrays, checking that every level has the shape's length."""
    if len(value) != shape[depth]:
        raise _Ragged
    if depth == len(shape) - 1:
        leaves.append(value)
        return
    for item in value:
        if not isinstance(item, simdjson.Array):
            raise _Ragged
        _collect(item, shape, depth + 1, leaves)


class _Ragged(Exception):
    """Not a regular array: decoded as plain Python values instead."""


def _leaf(value: simdjson.Array) -> np.ndarray | None:
    """One innermost array as int64 or float64; None if it holds anything but numbers."""
    ends: list[Any] = [value[0], value[len(value) - 1]]
    if not all(type(x) in (int, float) for x in ends):
        return None
    try:
        return np.frombuffer(value.as_buffer(of_type="i"), dtype=np.int64)
    except (TypeError, ValueError):
        pass
    try:
        flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if flat.size and float(np.abs(flat).max()) >= _INT64_LIMIT:
        return None  # numpy's answer depends on the exact integers
    return flat
