"""Request bodies that may be large or compressed, decoded without stalling the worker.

Both transports receive bodies as bytes and must turn them into values. Small ones
are decoded on the event loop (a hop elsewhere would cost more than the parse). Big
ones are decoded in two helper processes: every JSON parser at hand (simdjson,
orjson) holds the GIL for the whole parse, half a second for 50 MB, and on a thread
that still stalls ``/health`` and every small request. A compressed body is inflated
on a thread (zlib lets go of the GIL), piece by piece, with its output capped at
``maxRequestBytes``: a bomb is refused the moment it passes the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import mmap
import multiprocessing
import os
import tempfile
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import orjson

from . import json_tensors
from .errors import InferenceError
from .logs import get_logger

log = get_logger("bodies")

#: Threads that inflate and processes that decode big bodies: two of each, so one huge
#: body cannot hold up the next, and few enough that hostile bodies cannot take every core.
_DECODERS = 2
_executor: ThreadPoolExecutor | None = None
_processes: ProcessPoolExecutor | None = None

#: How much lower the decoding threads and processes run than the event loop.
_NICENESS = 10

#: Compressed bodies are inflated this much at a time.
_INFLATE_PIECE = 1 << 20
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}


def _decoders() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_DECODERS, thread_name_prefix="inflate",
                                       initializer=_lower_priority)
    return _executor


def _lower_priority() -> None:
    """Decoding yields the cores to the event loop: a 50 MB body may wait a little, a
    health probe or a small request should not (Linux: niceness per thread)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICENESS)


_reniced: set[int] = set()


def _lower_children(pool: ProcessPoolExecutor) -> None:
    """Lower each newly spawned decoding process at once, before its imports are done
    (an initializer would run only once the interpreter and numpy are up)."""
    for pid in list(getattr(pool, "_processes", None) or ()):
        if pid not in _reniced:
            _reniced.add(pid)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, _NICENESS)


def _decoding_processes() -> ProcessPoolExecutor:
    """Started on the first big body (spawned: forking a process with threads is unsafe)."""
    global _processes
    if _processes is None:
        _processes = ProcessPoolExecutor(max_workers=_DECODERS,
                                         mp_context=multiprocessing.get_context("spawn"))
    return _processes


#: Whether a big body was decoded since memory was last handed back (``release_memory``).
_big_since_release = False


def release_memory() -> None:
    """Hand the heap's free pages back to the system after big bodies (glibc only).

    A big body's values are made on helper threads (the process pool's result thread,
    the decoders) and freed on the loop's thread, so glibc's per-thread heaps keep the
    freed pages: under a steady trickle of multi-megabyte bodies the worker's memory
    crept up for minutes. Called now and then (the health check), never per request.
    """
    global _big_since_release
    if not _big_since_release:
        return
    _big_since_release = False
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


async def _decode_large(body: Body, max_elements: int) -> Any:
    """``json_tensors.loads_large`` in a decoding process, the body and any large arrays
    in the answer passed through files in memory (``_spill``): pickling them through a
    pipe holds the GIL for tens of milliseconds per 50 MB on this side."""
    global _processes, _big_since_release
    _big_since_release = True
    loop = asyncio.get_running_loop()
    path = await loop.run_in_executor(_decoders(), _spill, body)
    try:
        pool = _decoding_processes()
        work = pool.submit(_decode_in_child, path, max_elements)
    except BaseException:
        _unlink(path)
        raise
    _lower_children(pool)
    try:
        value = await asyncio.wrap_future(work)
    except asyncio.CancelledError:  # its arrays arrive (or came) for nobody: remove them
        work.add_done_callback(_discard)
        raise
    except BrokenProcessPool:
        log.error("a body-decoding process died; starting new ones")
        broken, _processes = _processes, None
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)
        raise InferenceError("ERR_INTERNAL", "decoding the request body failed; the worker's "
                             "log has the details") from None
    return await loop.run_in_executor(_decoders(), _map_values, value, _map_spilled)


def _spill_dir() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _spill(data: bytes | memoryview | list[bytes]) -> str:
    """``data`` in a new file in memory (os.write lets go of the GIL); its path."""
    fd, path = tempfile.mkstemp(prefix="wrk-ai-inference-", dir=_spill_dir())
    try:
        for chunk in data if isinstance(data, list) else [data]:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    except BaseException:
        _unlink(path)
        raise
    finally:
        os.close(fd)
    return path


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _Spilled:
    """An array the decoding process left in a file, to be mapped here without a copy."""

    __slots__ = ("dtype", "path", "shape")

    def __init__(self, path: str, shape: tuple[int, ...], dtype: str) -> None:
        self.path, self.shape, self.dtype = path, shape, dtype


#: Arrays from this many bytes travel back as files; smaller ones are pickled.
_SPILL_BYTES = 1 << 19


def _decode_in_child(path: str, max_elements: int) -> Any:
    """In a decoding process: read and remove the body's file, decode, spill big arrays."""
    try:
        with open(path, "rb") as fh:
            body = fh.read()
    finally:
        _unlink(path)
    return json_tensors.map_numbers(json_tensors.loads_large(body, max_elements),
                                    _spill_array)


def _spill_array(numbers: json_tensors.JsonNumbers) -> Any:
    array = numbers.array
    if array.nbytes < _SPILL_BYTES:
        return numbers
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
    return _Spilled(_spill(raw.data), array.shape, array.dtype.str)


def _map_spilled(spilled: Any) -> Any:
    if not isinstance(spilled, _Spilled):  # a small array, pickled whole
        return spilled
    dtype = np.dtype(spilled.dtype)
    fd = os.open(spilled.path, os.O_RDONLY)
    try:
        size = dtype.itemsize * math.prod(spilled.shape)
        # private: writes (none are expected) would never reach the file
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        _unlink(spilled.path)
    return json_tensors.JsonNumbers(np.frombuffer(mapped, dtype=dtype).reshape(spilled.shape))


def _map_values(value: Any, change: Callable[[Any], Any]) -> Any:
    """``value`` with each JsonNumbers or _Spilled replaced by ``change`` of it."""
    return json_tensors.map_numbers(value, change, (json_tensors.JsonNumbers, _Spilled))


def _discard(done: Future[Any]) -> None:
    if not done.cancelled() and done.exception() is None:
        _map_values(done.result(), lambda v: _unlink(v.path) if isinstance(v, _Spilled) else v)


def shutdown() -> None:
    """Stop the helper processes and threads (at the worker's stop)."""
    global _executor, _processes
    for pool in (_executor, _processes):
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    _executor = _processes = None


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


Body = bytes | list[bytes]


def joined(chunks: list[bytes]) -> bytes:
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def collapsed(chunks: list[bytes]) -> Body:
    """The chunks a body arrived in, as bytes when there is one (the common case)."""
    return chunks[0] if len(chunks) == 1 else chunks


def size_of(body: Body) -> int:
    return len(body) if isinstance(body, bytes) else sum(len(c) for c in body)


async def decode_json(body: Body, max_elements: int) -> Any:
    """The body (bytes, or the chunks it arrived in) as JSON values, number arrays as
    ``JsonNumbers``; ERR_INVALID_REQUEST when it is not JSON. Bodies over
    ``json_tensors.LARGE_BYTES`` are decoded off the loop and counted against
    ``max_elements`` while they are decoded; their chunks are never joined here."""
    if size_of(body) <= json_tensors.LARGE_BYTES:
        return loads_small(body if isinstance(body, bytes) else joined(body))
    return await _decode_large(body, max_elements)


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
