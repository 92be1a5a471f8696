"""Response bodies shared by every HTTP route and the guard middleware.

Errors have two shapes: the seed API's ``{"success": false, "error", "message",
"details"}`` and the Open Inference Protocol's ``{"error": "ERR_...: message"}`` (under
/v2), each with its own status table from ``errors``; both are rendered here only.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from ..errors import V2_STATUS, InferenceError

_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_ORJSON_OPTS)


def error_response(error: InferenceError, v2: bool = False) -> JSON:
    headers = {}
    retry = error.details.get("retryAfter")
    if retry is not None:
        headers["Retry-After"] = str(retry)
    if error.code == "ERR_UNAUTHORIZED":
        headers["WWW-Authenticate"] = "Bearer"
    if error.code == "ERR_PAYLOAD_TOO_LARGE":
        # the rest of the body is read and dropped, then the connection closes (protocol.py)
        headers["Connection"] = "close"
    if v2:
        return JSON(error.to_v2_dict(), status_code=V2_STATUS[error.code], headers=headers)
    return JSON(error.to_dict(), status_code=error.http_status, headers=headers)


def is_v2(path: str) -> bool:
    return path.startswith("/v2")
