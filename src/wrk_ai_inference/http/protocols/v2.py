"""The Open Inference Protocol (KServe v2, Triton's HTTP API) on the same core.

Routes under /v2 translate to InferenceWorker calls and nothing more: the same
validation, batching, capacity, deadlines and history as the seed API. Errors
are ``{"error": "<message>", "code": "<ERR_CODE>"}`` with the protocol's status codes,
the message in Triton's words where its clients match them.
Inference is a ``fast`` route: the protocol-level server answers it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import orjson
from fastapi.responses import Response

from ... import __version__, bodies
from ...errors import InferenceError
from ...models.manager import ModelState
from ...worker import InferenceWorker, WorkerState
from .. import v2_codec, v2_config
from ..routing import Call, Route, Table

_STATES = {ModelState.LOADED: "READY", ModelState.LOADING: "LOADING",
           ModelState.FETCHING: "LOADING",
           ModelState.UNLOADING: "UNLOADING", ModelState.AVAILABLE: "UNAVAILABLE",
           ModelState.FAILED: "UNAVAILABLE"}


def _check_version(worker: InferenceWorker, model: str, version: str | None) -> None:
    if version is None or version == "":
        return
    spec = worker.models.entry(model).spec
    known = spec.version if spec else None
    if known is not None and version not in (known, "1"):
        raise InferenceError("ERR_MODEL_NOT_FOUND",
                             f"model '{model}' has version {known}, not {version}")


async def _infer(worker: InferenceWorker, call: Call) -> Response:
    """POST /v2/models/{model}[/versions/{v}]/infer."""
    model, version = call.params["model"], call.params.get("version")
    body = await bodies.inflate(bodies.joined(call.body) if isinstance(call.body, list)
                                else call.body, call.header("content-encoding"),
                                worker.settings.max_request_bytes)
    json_part, binary = v2_codec.split_body(body, call.header(v2_codec.HEADER))
    header = None if json_part is None else v2_codec.check_header(
        await bodies.decode_json(json_part, worker.settings.max_tensor_elements))
    entry = worker.models.entry(model)
    _check_version(worker, model, version)
    if entry.session is None and worker.settings.auto_load:
        await worker.load_model(model)  # as the seed API loads a cold model (autoLoad)
        entry = worker.models.entry(model)
    if entry.session is None:
        raise InferenceError("ERR_MODEL_NOT_AVAILABLE", f"model '{model}' is not loaded; "
                             f"POST /v2/repository/models/{model}/load", {"retryAfter": 1})
    request = v2_codec.parse_infer(header, binary, entry.session.inputs)
    options: dict[str, Any] = {}
    timeout_us = request.parameters.get("timeout")
    if isinstance(timeout_us, int | float) and not isinstance(timeout_us, bool) \
            and timeout_us > 0:
        options["timeout"] = min(timeout_us / 1000.0, 3_600_000)
    if request.outputs is not None:
        options["outputs"] = request.outputs
    result = (await worker.run_tensors(model, request.inputs, options))["result"]
    payload, out_headers = v2_codec.encode_response(model, result["version"], request,
                                                    result["outputs"])
    return Response(payload, headers=out_headers)


async def _metadata(worker: InferenceWorker, model: str) -> dict[str, Any]:
    entry = worker.models.entry(model)
    meta = await worker.models.get_model(model)
    if meta.get("inputs") is None:
        raise InferenceError("ERR_MODEL_NOT_AVAILABLE", f"model '{model}' is not loaded and "
                             "its model.json does not declare its inputs")
    spec = entry.spec
    return {"name": model, "versions": [meta["version"]] if meta.get("version") else [],
            "platform": "onnx_onnxv1" if spec and spec.runtime.startswith("onnx")
            else str(meta.get("runtime")),
            "inputs": meta["inputs"], "outputs": meta.get("outputs") or []}


async def _config(worker: InferenceWorker, model: str) -> dict[str, Any]:
    """Triton's model configuration of a loaded model, or one whose model.json declares
    its inputs and outputs."""
    entry = worker.models.entry(model)
    if entry.session is not None:
        inputs, outputs = entry.session.inputs, entry.session.outputs
    else:
        await worker.models.get_model(model)  # reads model.json
        spec = entry.spec
        if spec is None or spec.inputs is None or spec.outputs is None:
            raise InferenceError("ERR_MODEL_NOT_AVAILABLE", f"model '{model}' is not loaded and "
                                 "its model.json does not declare its inputs and outputs")
        inputs, outputs = spec.inputs, spec.outputs
    return v2_config.model_config(entry, inputs, outputs)


async def _load_parameters(body: bytes) -> Any:
    """The ``parameters`` of a repository load request (None for an empty body)."""
    if not body.strip():
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InferenceError("ERR_INVALID_REQUEST", "the load request body is not JSON"
                             ) from None
    if not isinstance(request, dict):
        raise InferenceError("ERR_INVALID_REQUEST", "the load request must be a JSON object")
    return request.get("parameters")


def _stats(worker: InferenceWorker, model: str) -> dict[str, Any]:
    totals = worker.history.totals(model)
    entry = worker.models.entry(model)
    executions = worker.engine.executions.get(model, 0)

    def pair(count: int, ms: float) -> dict[str, int]:
        return {"count": count, "ns": int(ms * 1_000_000)}

    return {
        "name": model,
        "version": entry.spec.version if entry.spec else "",
        "last_inference": int(totals["last"] * 1000) if totals["last"] else 0,
        "inference_count": totals["success"],
        "execution_count": executions,
        "inference_stats": {
            "success": pair(totals["success"], totals["successMs"]),
            "fail": pair(totals["failed"], totals["failedMs"]),
            "queue": pair(totals["success"], totals["queueMs"]),
            "compute_input": pair(totals["success"], 0.0),
            "compute_infer": pair(totals["success"], totals["computeMs"]),
            "compute_output": pair(totals["success"], 0.0),
            "cache_hit": pair(0, 0.0),
            "cache_miss": pair(0, 0.0),
        },
        "batch_stats": [],
    }


def _ready_code(ok: bool) -> Response:
    return Response(status_code=200 if ok else 400)


async def _live(worker: InferenceWorker, call: Call) -> Response:
    return Response(status_code=200)


async def _ready(worker: InferenceWorker, call: Call) -> Response:
    return Response(status_code=200 if worker.state is WorkerState.READY else 503)


async def _server_metadata(worker: InferenceWorker, call: Call) -> Response:
    return _json({"name": "wrk-ai-inference", "version": __version__,
                  "extensions": ["binary_tensor_data", "model_repository",
                                 "model_configuration", "statistics"]})


async def _all_stats(worker: InferenceWorker, call: Call) -> Response:
    models = sorted(set(worker.models.loaded_ids()) | set(worker.engine.executions))
    return _json({"model_stats": [_stats(worker, m) for m in models]})


async def _model_stats(worker: InferenceWorker, call: Call) -> Response:
    model = call.params["model"]
    return await _describe(worker, model, call.params.get("version"),
                           lambda: {"model_stats": [_stats(worker, model)]})


async def _model_ready(worker: InferenceWorker, call: Call) -> Response:
    model = call.params["model"]
    try:
        entry = worker.models.entry(model)
        _check_version(worker, model, call.params.get("version"))
    except InferenceError:
        return _ready_code(False)
    return _ready_code(entry.state is ModelState.LOADED)


async def _model_metadata(worker: InferenceWorker, call: Call) -> Response:
    model = call.params["model"]
    return await _describe(worker, model, call.params.get("version"),
                           lambda: _metadata(worker, model))


async def _model_config(worker: InferenceWorker, call: Call) -> Response:
    model = call.params["model"]
    return await _describe(worker, model, call.params.get("version"),
                           lambda: _config(worker, model))


async def _index(worker: InferenceWorker, call: Call) -> Response:
    body = bodies.joined(call.body) if isinstance(call.body, list) else call.body
    only_ready = False
    if body.strip():
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InferenceError("ERR_INVALID_REQUEST", "body is not JSON") from None
        only_ready = isinstance(parsed, dict) and parsed.get("ready") is True
    rows = []
    for meta in await worker.models.list_models():
        state = _STATES[ModelState(meta["state"])]
        if only_ready and state != "READY":
            continue
        rows.append({"name": meta["id"], "version": meta.get("version") or "",
                     "state": state, "reason": meta.get("error") or ""})
    return _json(rows)


async def _load(worker: InferenceWorker, call: Call) -> Response:
    """Load and unload answer 200 with no body, or the v2 error; a failed load's message
    starts "failed to load '<model>'", as Triton's does."""
    model = call.params["model"]
    body = bodies.joined(call.body) if isinstance(call.body, list) else call.body
    parameters = await _load_parameters(body)
    try:
        if parameters is not None:
            # the override is checked against the model as it is: load it first
            await worker.load_model(model)
            changes = v2_config.overrides(model, parameters, await _config(worker, model))
            await worker.load_model(model, changes)
        else:
            await worker.load_model(model)
    except InferenceError as exc:
        if exc.message.startswith("failed to load"):
            raise
        raise InferenceError(exc.code, f"failed to load '{model}': {exc.message}",
                             exc.details) from exc
    return Response(status_code=200)


async def _unload(worker: InferenceWorker, call: Call) -> Response:
    await worker.unload_model(call.params["model"])
    return Response(status_code=200)


def _twice(method: str, tail: str, handler: Any, fast: bool = False, summary: str = ""
           ) -> tuple[Route, Route]:
    """A model route and the same with ``/versions/{version}``."""
    return (Route(method, f"/v2/models/{{model}}{tail}", handler, fast=fast, summary=summary),
            Route(method, f"/v2/models/{{model}}/versions/{{version}}{tail}", handler,
                  fast=fast, summary=summary))


TABLE = Table("v2", "v2 (Open Inference Protocol)", (
    Route("GET", "/v2/health/live", _live, summary="Liveness"),
    Route("GET", "/v2/health/ready", _ready, summary="Readiness"),
    Route("GET", "/v2", _server_metadata, summary="Server metadata"),
    Route("GET", "/v2/models/stats", _all_stats, summary="Statistics of every model"),
    *_twice("GET", "/stats", _model_stats, summary="Model statistics"),
    *_twice("GET", "/ready", _model_ready, summary="Model readiness"),
    *_twice("GET", "", _model_metadata, summary="Model metadata"),
    *_twice("GET", "/config", _model_config, summary="Model configuration"),
    *_twice("POST", "/infer", _infer, fast=True, summary="Inference"),
    Route("POST", "/v2/repository/index", _index, summary="Repository index"),
    Route("POST", "/v2/repository/models/{model}/load", _load, summary="Load a model"),
    Route("POST", "/v2/repository/models/{model}/unload", _unload, summary="Unload a model"),
))


async def _describe(worker: InferenceWorker, model: str, version: str | None,
                    describe: Callable[[], Any]) -> Response:
    """A route that describes one model (and version): its JSON (``describe`` may be a
    coroutine function)."""
    _check_version(worker, model, version)
    value = describe()
    return _json(await value if inspect.isawaitable(value) else value)


def _json(value: Any) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")

