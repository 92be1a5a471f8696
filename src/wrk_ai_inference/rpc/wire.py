"""hp-svc-facs-net's failure reply, which Node orchestrators parse: the JSON string
``"[HRPC_ERR]=<CODE>: <message>"``."""

from __future__ import annotations

import orjson

ERR_PREFIX = "[HRPC_ERR]="


def error_reply(code: str, message: str | None = None) -> bytes:
    """An RPC failure as hp-svc-facs-net sends it."""
    return orjson.dumps(ERR_PREFIX + (f"{code}: {message}" if message else code))
