"""The seed API: ``/api/inference/{modelId}``, model loading, capacity, health, metrics.

Each handler is one call into ``InferenceWorker``. Bodies are parsed with orjson
straight from the request bytes and replies written with orjson (numpy arrays
included); a big body is never joined on the loop. The reply envelope
(``success``, ``inferenceId``, ...) is this protocol's, added here.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from ... import bodies, json_tensors
from ...errors import InferenceError
from ...metrics import CONTENT_TYPE
from ...worker import InferenceWorker, WorkerState
from ..responses import JSON
from ..routing import Call, Route, Table
from ..schemas import INFERENCE_REQUEST_SCHEMA


async def inference(worker: InferenceWorker, call: Call) -> Response:
    """POST /api/inference/{modelId}: ``{"inputData": ..., "options": {...}}``."""
    body = call.body
    payload = (bodies.loads_small(body) if isinstance(body, bytes)
               and len(body) <= json_tensors.LARGE_BYTES
               else await bodies.decode_json(body, worker.settings.max_tensor_elements))
    if not isinstance(payload, dict) or "inputData" not in payload:
        raise InferenceError("ERR_INVALID_REQUEST",
                             'body must be an object {"inputData": ..., "options": {...}}')
    result = await worker.run_inference(call.params["modelId"], payload["inputData"],
                                        payload.get("options"))
    return JSON(result)


async def _health(worker: InferenceWorker, call: Call) -> Response:
    body = await worker.get_health()
    return JSON(body, status_code=200 if worker.state is WorkerState.READY else 503)


async def _load(worker: InferenceWorker, call: Call) -> Response:
    return JSON(await worker.load_model(call.params["modelId"]))


async def _unload(worker: InferenceWorker, call: Call) -> Response:
    return JSON(await worker.unload_model(call.params["modelId"]))


async def _cancel(worker: InferenceWorker, call: Call) -> Response:
    return JSON(await worker.cancel(call.params["inferenceId"]))


async def _capacity(worker: InferenceWorker, call: Call) -> Response:
    return JSON(await worker.check_capacity(call.query.get("modelId")))


async def _models(worker: InferenceWorker, call: Call) -> Response:
    return JSON(await worker.list_models())


async def _model(worker: InferenceWorker, call: Call) -> Response:
    return JSON(await worker.get_model(call.params["modelId"]))


async def _stats(worker: InferenceWorker, call: Call) -> Response:
    return JSON(await worker.get_stats())


async def _metrics(worker: InferenceWorker, call: Call) -> Response:
    return Response(worker.metrics.render(), media_type=CONTENT_TYPE)


_BODY: dict[str, Any] = {"requestBody": {
    "required": True, "content": {"application/json": {"schema": INFERENCE_REQUEST_SCHEMA}}}}

TABLE = Table("seed", "seed API", (
    Route("POST", "/api/inference/{modelId}", inference, fast=True, summary="Run inference",
          responses=(400, 401, 404, 409, 413, 429, 500, 503, 504), openapi=_BODY),
    Route("POST", "/api/inference/{inferenceId}/cancel", _cancel,
          summary="Stop a running generation", responses=(400, 401)),
    Route("GET", "/health", _health, summary="Health", responses=(503,)),
    Route("POST", "/api/models/{modelId}/load", _load, summary="Load a model",
          responses=(401, 404, 422, 429, 503)),
    Route("POST", "/api/models/{modelId}/unload", _unload, summary="Unload a model",
          responses=(401, 404, 503)),
    Route("GET", "/api/capacity", _capacity, summary="Capacity", query=("modelId",),
          responses=(401, 404)),
    Route("GET", "/api/models", _models, summary="List models", responses=(401,)),
    Route("GET", "/api/models/{modelId}", _model, summary="One model", responses=(401, 404)),
    Route("GET", "/api/stats", _stats, summary="Statistics", responses=(401,)),
    Route("GET", "/metrics", _metrics, summary="Prometheus metrics", responses=(401,)),
))
