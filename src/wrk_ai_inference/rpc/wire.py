"""hp-svc-facs-net's failure reply, which Node orchestrators parse: the JSON string
``"[HRPC_ERR]=<CODE>: <message>"``; both ends of it (clients import only this, not the
worker's core)."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import HTTP_STATUS, InferenceError

ERR_PREFIX = "[HRPC_ERR]="


def error_reply(code: str, message: str | None = None) -> bytes:
    """An RPC failure as hp-svc-facs-net sends it."""
    return orjson.dumps(ERR_PREFIX + (f"{code}: {message}" if message else code))


def parse_reply(body: bytes) -> Any:
    """Client side: the result, or InferenceError for an ``[HRPC_ERR]`` reply."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InferenceError("ERR_FACS_NET_DATA_FORMAT", "the reply is not JSON") from exc
    if isinstance(value, str) and value.startswith(ERR_PREFIX):
        text = value[len(ERR_PREFIX):]
        code, _, message = text.partition(": ")
        if code not in HTTP_STATUS:
            code, message = "ERR_INFERENCE_FAILED", text
        raise InferenceError(code, message or code)
    return value

