"""The Open Inference Protocol (KServe v2, Triton's HTTP API) on the same core.

Routes under /v2 translate to InferenceWorker calls and nothing more: the same
validation, batching, capacity, deadlines and history as the seed API. Errors
are ``{"error": "<ERR_CODE>: <message>"}`` with the protocol's status codes.
Inference goes through ``v2_infer`` from the ASGI fast path (like the seed
route); the other routes are ordinary FastAPI routes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import __version__, bodies
from ..errors import InferenceError
from ..models.manager import ModelState
from ..worker import InferenceWorker, WorkerState
from . import v2_codec, v2_config
from .responses import error_response

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_STATES = {ModelState.LOADED: "READY", ModelState.LOADING: "LOADING",
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


async def v2_infer(worker: InferenceWorker, model: str, version: str | None, body: bytes,
                   headers: dict[str, str]) -> Response:
    """POST /v2/models/{model}[/versions/{v}]/infer."""
    try:
        body = await bodies.inflate(body, headers.get("content-encoding"),
                                    worker.settings.max_request_bytes)
        json_part, binary = v2_codec.split_body(body, headers.get(v2_codec.HEADER))
        header = None if json_part is None else v2_codec.check_header(
            await bodies.decode_json(json_part, worker.settings.max_tensor_elements))
        entry = worker.models.entry(model)
        _check_version(worker, model, version)
        if entry.session is None:
            raise InferenceError("ERR_MODEL_NOT_AVAILABLE", f"model '{model}' is not loaded; "
                                 f"POST /v2/repository/models/{model}/load",
                                 {"retryAfter": 1})
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
    except InferenceError as exc:
        return error_response(exc, protocol="v2")
    return Response(payload, headers=out_headers)


def _metadata(worker: InferenceWorker, model: str) -> dict[str, Any]:
    entry = worker.models.entry(model)
    meta = worker.models.get_model(model)
    if meta.get("inputs") is None:
        raise InferenceError("ERR_MODEL_NOT_AVAILABLE", f"model '{model}' is not loaded and "
                             "its model.json does not declare its inputs")
    spec = entry.spec
    return {"name": model, "versions": [meta["version"]] if meta.get("version") else [],
            "platform": "onnx_onnxv1" if spec and spec.runtime.startswith("onnx")
            else str(meta.get("runtime")),
            "inputs": meta["inputs"], "outputs": meta.get("outputs") or []}


def _config(worker: InferenceWorker, model: str) -> dict[str, Any]:
    """Triton's model configuration of a loaded model, or one whose model.json declares
    its inputs and outputs."""
    entry = worker.models.entry(model)
    if entry.session is not None:
        inputs, outputs = entry.session.inputs, entry.session.outputs
    else:
        worker.models.get_model(model)  # reads model.json
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


def v2_router(worker: InferenceWorker) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

    def ready_code(ok: bool) -> Response:
        return Response(status_code=200 if ok else 400)

    @router.get("/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @router.get("/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if worker.state is WorkerState.READY else 503)

    @router.get("")
    async def server_metadata() -> Response:
        return Response(orjson.dumps({"name": "wrk-ai-inference", "version": __version__,
                                      "extensions": ["binary_tensor_data", "model_repository",
                                                     "model_configuration", "statistics"]}),
                        media_type="application/json")

    @router.get("/models/stats")
    async def all_stats() -> Response:
        models = sorted(set(worker.models.loaded_ids())
                        | {m for m in worker.engine.executions})
        return _json({"model_stats": [_stats(worker, m) for m in models]})

    @router.get("/models/{model}/stats")
    @router.get("/models/{model}/versions/{version}/stats")
    async def model_stats(model: str, version: str | None = None) -> Response:
        return _describe(worker, model, version,
                         lambda: {"model_stats": [_stats(worker, model)]})

    @router.get("/models/{model}/ready")
    @router.get("/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None) -> Response:
        try:
            entry = worker.models.entry(model)
            _check_version(worker, model, version)
        except InferenceError:
            return ready_code(False)
        return ready_code(entry.state is ModelState.LOADED)

    @router.get("/models/{model}")
    @router.get("/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str | None = None) -> Response:
        return _describe(worker, model, version, lambda: _metadata(worker, model))

    @router.get("/models/{model}/config")
    @router.get("/models/{model}/versions/{version}/config")
    async def model_config(model: str, version: str | None = None) -> Response:
        return _describe(worker, model, version, lambda: _config(worker, model))

    @router.post("/models/{model}/infer")
    @router.post("/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        return await v2_infer(worker, model, version, await request.body(),
                              dict(request.headers))

    @router.post("/repository/index")
    async def index(request: Request) -> Response:
        body = await request.body()
        only_ready = False
        if body.strip():
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                return error_response(InferenceError("ERR_INVALID_REQUEST", "body is not JSON"),
                                      protocol="v2")
            only_ready = isinstance(parsed, dict) and parsed.get("ready") is True
        rows = []
        for meta in worker.models.list_models():
            state = _STATES[ModelState(meta["state"])]
            if only_ready and state != "READY":
                continue
            rows.append({"name": meta["id"], "version": meta.get("version") or "",
                         "state": state, "reason": meta.get("error") or ""})
        return _json(rows)

    async def repository_action(action: Any) -> Response:
        """Load and unload answer 200 with no body, or the v2 error."""
        try:
            await action
        except InferenceError as exc:
            return error_response(exc, protocol="v2")
        return Response(status_code=200)

    @router.post("/repository/models/{model}/load")
    async def load(model: str, request: Request) -> Response:
        try:
            parameters = await _load_parameters(await request.body())
            if parameters is None:
                return await repository_action(worker.load_model(model))
            # the override is checked against the model as it is: load it first
            await worker.load_model(model)
            changes = v2_config.overrides(model, parameters, _config(worker, model))
        except InferenceError as exc:
            return error_response(exc, protocol="v2")
        return await repository_action(worker.load_model(model, changes))

    @router.post("/repository/models/{model}/unload")
    async def unload(model: str) -> Response:
        return await repository_action(worker.unload_model(model))

    return router


def _describe(worker: InferenceWorker, model: str, version: str | None,
              describe: Callable[[], Any]) -> Response:
    """A route that describes one model (and version): its JSON, or the v2 error."""
    try:
        _check_version(worker, model, version)
        return _json(describe())
    except InferenceError as exc:
        return error_response(exc, protocol="v2")


def _json(value: Any) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")

