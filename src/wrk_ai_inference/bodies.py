"""Request bodies that may be large or compressed, decoded without stalling the worker.

Both transports receive bodies as bytes and must turn them into values. Small ones
are decoded on the event loop (a thread hop would cost more than the parse); big ones
on a few threads of their own, so that ``/health`` and small requests keep their
turn while a 50 MB body is decoded. A compressed body is inflated piece by piece with
its output capped at ``maxRequestBytes``: a bomb is refused the moment it passes the
cap, and never inflated on the loop.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from . import json_tensors
from .errors import InferenceError

T = TypeVar("T")

#: Threads that decode big bodies: two of them, so one huge body cannot hold up the
#: next, and few enough that hostile bodies cannot take every core.
_DECODERS = 2
_executor: ThreadPoolExecutor | None = None

#: Compressed bodies are inflated this much at a time.
_INFLATE_PIECE = 1 << 20
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}


def _decoders() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_DECODERS, thread_name_prefix="decode")
    return _executor


async def off_loop(fn: Callable[[bytes], T], body: bytes) -> T:
    """``fn(body)`` on the decoding threads."""
    return await asyncio.get_running_loop().run_in_executor(_decoders(), fn, body)


def too_large(limit: int, what: str = "request body") -> InferenceError:
    return InferenceError("ERR_PAYLOAD_TOO_LARGE",
                          f"{what} exceeds maxRequestBytes ({limit} bytes)", {"limit": limit})


def loads_small(body: bytes) -> Any:
    """``json_tensors.loads`` with the transport's error for a body that is not JSON."""
    try:
        return json_tensors.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InferenceError("ERR_INVALID_REQUEST", f"request body is not valid JSON: {exc}"
                             ) from None


async def decode_json(body: bytes, max_elements: int) -> Any:
    """The body as JSON values (number arrays as ``JsonNumbers``); ERR_INVALID_REQUEST
    when it is not JSON. Bodies over ``json_tensors.LARGE_BYTES`` are decoded off the
    loop and counted against ``max_elements`` while they are decoded."""
    if len(body) <= json_tensors.LARGE_BYTES:
        return loads_small(body)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoders(), json_tensors.loads_large, body,
                                      max_elements)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(_WBITS[encoding])
    pieces: list[bytes] = []
    size = 0
    data = body
    try:
        while data:
            piece = inflater.decompress(data, _INFLATE_PIECE)
            size += len(piece)
            if size > limit:
                raise too_large(limit, "the inflated request body")
            pieces.append(piece)
            data = inflater.unconsumed_tail
            if inflater.eof:
                break
        if not inflater.eof:
            raise InferenceError("ERR_INVALID_REQUEST",
                                 f"body is not valid {encoding}: it ends before the stream does")
    except zlib.error as exc:
        raise InferenceError("ERR_INVALID_REQUEST", f"body is not valid {encoding}: {exc}"
                             ) from None
    return b"".join(pieces)


async def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body after its Content-Encoding, at most ``limit`` bytes of it (else 413)."""
    if not encoding or encoding == "identity":
        return body
    encoding = encoding.strip().lower()
    if encoding not in _WBITS:
        raise InferenceError("ERR_INVALID_REQUEST", f"Content-Encoding {encoding!r} is not "
                             "supported (gzip, deflate)")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoders(), _inflate, body, encoding, limit)
