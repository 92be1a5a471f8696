"""Length-prefixed frames between the worker and its child processes (the Node sidecar,
the Whisper children).

``u32be total | u32be headerLength | header JSON | body bytes``: the JSON header
carries the routing (type, id, method) and the body carries the payload (an RPC's,
audio samples) untouched, so payloads are never JSON-escaped twice.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

_U32 = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _U32.pack(4 + len(head) + len(body)) + _U32.pack(len(head)) + head + body


def decode(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """``frame`` is everything after the total-length prefix."""
    (head_len,) = _U32.unpack_from(frame, 0)
    if 4 + head_len > len(frame):
        raise ValueError(f"frame header of {head_len} bytes is past the frame's end")
    header = orjson.loads(frame[4 : 4 + head_len])
    if not isinstance(header, dict):
        raise ValueError("frame header is not a JSON object")
    return header, frame[4 + head_len :]


def read_length(prefix: bytes) -> int:
    (total,) = _U32.unpack(prefix)
    if total < 4 or total > MAX_FRAME:
        raise ValueError(f"bad frame length {total}")
    return int(total)
