"""RPC method names -> InferenceWorker calls, with hp-svc-facs-net's wire conventions.

Requests are UTF-8 JSON; replies are UTF-8 JSON of the result; a failure is the
JSON string ``"[HRPC_ERR]=<CODE>: <message>"``, and a payload that is not JSON
is ``"[HRPC_ERR]=ERR_FACS_NET_DATA_FORMAT"``. Nothing here decides behaviour:
that lives in the worker, so HTTP and RPC answer alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .. import bodies, json_tensors
from ..errors import InferenceError
from ..logs import get_logger, new_id, request_id_var, transport_var
from ..worker import InferenceWorker
from .wire import error_reply

log = get_logger("rpc")

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

Handler = Callable[[InferenceWorker, dict[str, Any]], Awaitable[Any]]


def _model_id(payload: dict[str, Any]) -> str:
    model_id = payload.get("modelId")
    if not isinstance(model_id, str):
        raise InferenceError("ERR_INVALID_REQUEST", "modelId (a string) is required")
    return model_id


async def _run_inference(worker: InferenceWorker, p: dict[str, Any]) -> Any:
    if "inputData" not in p:
        raise InferenceError("ERR_INVALID_REQUEST", "inputData is required")
    return await worker.run_inference(_model_id(p), p["inputData"], p.get("options"),
                                      p.get("requestId"))


async def _check_capacity(worker: InferenceWorker, p: dict[str, Any]) -> Any:
    model_id = p.get("modelId")
    if model_id is not None and not isinstance(model_id, str):
        raise InferenceError("ERR_INVALID_REQUEST", "modelId must be a string")
    return await worker.check_capacity(model_id)


METHODS: dict[str, Handler] = {
    "runInference": _run_inference,
    "loadModel": lambda w, p: w.load_model(_model_id(p)),
    "unloadModel": lambda w, p: w.unload_model(_model_id(p)),
    "checkCapacity": _check_capacity,
    "getAvailableModels": lambda w, p: w.get_available_models(),
    "getHealth": lambda w, p: w.get_health(),
    "listModels": lambda w, p: w.list_models(),
    "getModel": lambda w, p: w.get_model(_model_id(p)),
    "getStats": lambda w, p: w.get_stats(),
    "cancel": lambda w, p: w.cancel(p.get("inferenceId")),
    "checkRequest": lambda w, p: w.check_request(p.get("requestId")),
}


async def _decode(worker: InferenceWorker, method: str, body: bytes) -> Any:
    """Number arrays straight into numpy only where they feed a model; other methods
    (ping echoes its payload) keep plain JSON values. Big bodies are decoded off the
    loop (``bodies.py``)."""
    if method == "runInference":
        if len(body) <= json_tensors.LARGE_BYTES:
            return json_tensors.loads(body)
        return await bodies.decode_json(body, worker.settings.max_tensor_elements)
    if len(body) <= json_tensors.LARGE_BYTES:
        return orjson.loads(body)
    payload = await bodies.decode_json(body, worker.settings.max_tensor_elements)
    return json_tensors.arrays(payload)


async def dispatch(worker: InferenceWorker, method: str, body: bytes) -> bytes:
    """Answer one RPC request; never raises. Each call gets a request id for its log lines
    (and for the messages that point a caller at the log)."""
    token = request_id_var.set(new_id())
    transport = transport_var.set("rpc")
    try:
        return await _dispatch(worker, method, body)
    finally:
        transport_var.reset(transport)
        request_id_var.reset(token)


async def _dispatch(worker: InferenceWorker, method: str, body: bytes) -> bytes:
    try:
        payload = await _decode(worker, method, body) if body else None
    except orjson.JSONDecodeError:
        return error_reply("ERR_FACS_NET_DATA_FORMAT")
    except InferenceError as exc:
        if exc.code == "ERR_INVALID_REQUEST":  # not JSON
            return error_reply("ERR_FACS_NET_DATA_FORMAT")
        return error_reply(exc.code, exc.message)
    try:
        if method == "ping":
            return orjson.dumps(await worker.ping(payload), option=_OPTS)
        handler = METHODS.get(method)
        if handler is None:
            raise InferenceError("ERR_INVALID_REQUEST", f"unknown method {method!r}")
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise InferenceError("ERR_INVALID_REQUEST", "the payload must be a JSON object")
        return orjson.dumps(await handler(worker, payload), option=_OPTS)
    except InferenceError as exc:
        return error_reply(exc.code, exc.message)
    except Exception as exc:
        log.exception("RPC handler failed", extra={"method": method})
        error = InferenceError.internal(exc)
        return error_reply(error.code, error.message)
