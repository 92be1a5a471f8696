"""What several protocol modules need alike: a JSON body decoded within the worker's
bounds, a stream's first event awaited before the status line goes out, a call's
arguments as an object."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson

from ... import bodies, json_tensors
from ...errors import InferenceError
from ...worker import InferenceWorker
from ..routing import Call


async def json_body(call: Call, worker: InferenceWorker) -> dict[str, Any]:
    body = call.body
    payload = (bodies.loads_small(body) if isinstance(body, bytes)
               and len(body) <= json_tensors.LARGE_BYTES
               else await bodies.decode_json(body, worker.settings.max_tensor_elements))
    payload = json_tensors.plain(payload)
    if not isinstance(payload, dict):
        raise InferenceError("ERR_INVALID_REQUEST", "the body must be a JSON object")
    return payload


async def first_event(events: AsyncGenerator[dict[str, Any], None]) -> dict[str, Any]:
    """The stream's ``start`` event: errors before it (bad input, a full worker) still get
    a proper status code rather than a 200 with an error inside the stream."""
    try:
        return await events.__anext__()
    except BaseException:
        await events.aclose()
        raise


def arguments_object(arguments: str) -> Any:
    """A call's arguments as the object protocols that carry objects want; ``{}`` for
    arguments cut short (the answer's length ended them: the finish reason says so)."""
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
