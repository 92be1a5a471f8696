"""Response bodies shared by every HTTP route and the guard middleware.

Errors have three shapes: the seed API's ``{"success": false, "error", "message",
"details"}``, the Open Inference Protocol's ``{"error": "ERR_...: message"}`` (under
/v2, with its own status table from ``errors``) and OpenAI's ``{"error": {"message",
"type", "param", "code"}}`` (under /v1, with the seed API's statuses); all are rendered
here only.
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


def error_response(error: InferenceError, protocol: str = "seed") -> JSON:
    headers = {}
    retry = error.details.get("retryAfter")
    if retry is not None:
        headers["Retry-After"] = str(retry)
    if error.code == "ERR_UNAUTHORIZED":
        headers["WWW-Authenticate"] = "Bearer"
    if error.code == "ERR_PAYLOAD_TOO_LARGE":
        # the rest of the body is read and dropped, then the connection closes (protocol.py)
        headers["Connection"] = "close"
    if protocol == "v2":
        return JSON(error.to_v2_dict(), status_code=V2_STATUS[error.code], headers=headers)
    if protocol == "openai":
        return JSON(error.to_openai_dict(), status_code=error.http_status, headers=headers)
    if protocol == "ollama":
        return JSON(error.to_ollama_dict(), status_code=error.http_status, headers=headers)
    if protocol == "anthropic":
        return JSON(error.to_anthropic_dict(), status_code=error.http_status,
                    headers=headers)
    return JSON(error.to_dict(), status_code=error.http_status, headers=headers)


#: Ollama's routes under /api, beside the seed API's
OLLAMA_PATHS = frozenset({"/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat",
                          "/api/generate", "/api/embed", "/api/embeddings", "/api/pull",
                          "/api/delete"})


def protocol_of(path: str) -> str:
    """Which protocol's error shape a path answers in."""
    if path in OLLAMA_PATHS:
        return "ollama"
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1") or path in ("/tokenize", "/detokenize", "/tokenizer_info"):
        return "openai"
    return "seed"
