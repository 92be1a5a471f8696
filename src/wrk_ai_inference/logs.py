"""Structured JSON-line logging with a request id carried in a context variable.

Every line is one JSON object so that a fleet's log pipeline can index it; the
request id set by a transport follows the request through the core without
being passed by hand.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import secrets
import sys
import time
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
#: the protocol a request came in by ("seed", "openai", "rpc", ...), set by its transport so
#: the request history can say it without the core knowing the transports
transport_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "transport", default=None
)

_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def new_id() -> str:
    """A 32-hex-digit id, unique within this process and across processes (random prefix);
    much cheaper than uuid4 on the request path."""
    return f"{_ID_PREFIX}{next(_ids):016x}"


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Renders a record as one JSON object; ``extra=`` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            entry["requestId"] = rid
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def setup_logging(debug: bool = False) -> None:
    """Route every logger (ours, uvicorn's) to JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # One access line per request is noise at thousands of req/s; we log our own.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"wrk_ai_inference.{name}")
