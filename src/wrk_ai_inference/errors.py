"""One error type for every failure, carrying a stable code.

Transports never invent errors of their own: HTTP maps the code to a status
(``HTTP_STATUS``) and RPC sends ``[HRPC_ERR]=<CODE>: <message>``. Keeping the
table here means a new code is added in exactly one place.
"""

from __future__ import annotations

import re
from typing import Any

HTTP_STATUS: dict[str, int] = {
    "ERR_INVALID_REQUEST": 400,
    "ERR_INVALID_INPUT": 400,
    "ERR_FACS_NET_DATA_FORMAT": 400,
    "ERR_UNAUTHORIZED": 401,
    "ERR_MODEL_NOT_FOUND": 404,
    "ERR_NOT_FOUND": 404,
    "ERR_METHOD_NOT_ALLOWED": 405,
    "ERR_MODEL_NOT_AVAILABLE": 409,
    "ERR_PAYLOAD_TOO_LARGE": 413,
    "ERR_MODEL_LOAD_FAILED": 422,
    "ERR_CAPACITY_EXCEEDED": 429,
    "ERR_INFERENCE_FAILED": 500,
    "ERR_INTERNAL": 500,
    "ERR_NOT_READY": 503,
    "ERR_RPC_UNAVAILABLE": 503,
    "ERR_INFERENCE_TIMEOUT": 504,
}


#: The Open Inference Protocol answers a few codes differently (Triton/KServe conventions):
#: "unavailable" is 503, a failed repository load 400. Everything else as above.
V2_STATUS: dict[str, int] = {**HTTP_STATUS, "ERR_MODEL_NOT_AVAILABLE": 503,
                             "ERR_CAPACITY_EXCEEDED": 503, "ERR_MODEL_LOAD_FAILED": 400}


class InferenceError(Exception):
    """A failure a client can act on: a code from ``HTTP_STATUS`` and a message."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": False,
            "error": self.code,
            "message": self.message,
            "details": self.details,
        }

    def to_v2_dict(self) -> dict[str, Any]:
        """Triton's error body: ``error`` is the text alone (Triton's clients and scripts
        match its wording, such as "Request for unknown model"); our code sits beside it."""
        return {"error": self.message, "code": self.code}

    def to_openai_dict(self) -> dict[str, Any]:
        """OpenAI's error body; ``code`` keeps the worker's code, ``type`` is OpenAI's."""
        status = self.http_status
        kind = ("authentication_error" if status == 401 else "rate_limit_error"
                if status == 429 else "server_error" if status >= 500
                else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind,
                          "param": self.details.get("param"), "code": self.code}}

    def to_ollama_dict(self) -> dict[str, Any]:
        """Ollama's error body, ``{"error": "..."}``; our code beside it."""
        return {"error": self.message, "code": self.code}

    def to_anthropic_dict(self) -> dict[str, Any]:
        """Anthropic's error body; ``code`` keeps the worker's code."""
        status = self.http_status
        kind = {401: "authentication_error", 404: "not_found_error",
                413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error"}.get(status, "api_error" if status >= 500
                                             else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message},
                "code": self.code}

    def __repr__(self) -> str:
        return f"InferenceError({self.code!r}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles whole (code, message, details): it crosses into helper processes."""
        return (type(self), (self.code, self.message, self.details))

    @classmethod
    def internal(cls, exc: BaseException) -> InferenceError:
        """What a transport answers for a bug: the exception's type, never its text."""
        return cls("ERR_INTERNAL", f"internal error: {type(exc).__name__}")


class ConfigError(Exception):
    """Start-up configuration is wrong; the message names the key."""


#: An absolute path in a message: everything up to the last segment, which is kept.
_PATH_RE = re.compile(r"(?<![\w./:])/(?:[^\s'\"/:,()]+/)+(?=[^\s'\"/:,()]*)")


def without_paths(text: str) -> str:
    """``text`` with absolute paths cut to their last segment: a client of a remote
    worker has no business knowing the machine's layout."""
    return _PATH_RE.sub("", text)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text for a message, without paths; the type's
    name when the text is empty."""
    lines = str(exc).strip().splitlines()
    return without_paths(lines[0] if lines else type(exc).__name__)[:limit]
