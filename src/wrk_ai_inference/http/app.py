"""The seed's HTTP API on FastAPI: each route is one call into ``InferenceWorker``.

Bodies are parsed with orjson straight from the request bytes and responses
are written with orjson (numpy arrays included), skipping pydantic on the hot
path; the pydantic schemas only document the contract.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, bodies, json_tensors
from ..errors import InferenceError
from ..logs import get_logger
from ..metrics import CONTENT_TYPE
from ..worker import InferenceWorker, WorkerState
from .disconnect import DisconnectWatch
from .docs import add_docs
from .middleware import GuardMiddleware
from .openai import openai_router
from .responses import JSON, error_response, protocol_of
from .schemas import INFERENCE_REQUEST_SCHEMA, errors
from .v2 import INFER_PATH, v2_infer, v2_router

log = get_logger("http")

_STATUS_CODES = {404: "ERR_NOT_FOUND", 405: "ERR_METHOD_NOT_ALLOWED", 413: "ERR_PAYLOAD_TOO_LARGE"}


async def inference_call(worker: InferenceWorker, model_id: str, body: bodies.Body
                         ) -> Response:
    """POST /api/inference/{modelId}: the one handler behind the protocol-level route
    (``protocol.py``), the ASGI fast path and the FastAPI route. ``body`` may be the
    chunks it arrived in: a big one is never joined on the loop."""
    try:
        payload = (bodies.loads_small(body) if isinstance(body, bytes)
                   and len(body) <= json_tensors.LARGE_BYTES
                   else await bodies.decode_json(body, worker.settings.max_tensor_elements))
        if not isinstance(payload, dict) or "inputData" not in payload:
            raise InferenceError("ERR_INVALID_REQUEST",
                                 'body must be an object {"inputData": ..., "options": {...}}')
        result = await worker.run_inference(model_id, payload["inputData"],
                                            payload.get("options"))
    except InferenceError as exc:
        return error_response(exc)
    return JSON(result)


class InferenceFastPath:
    """Serves the inference routes without the framework's per-request layers.

    Plain ``POST /api/inference/{modelId}`` requests are answered earlier, by the
    protocol (``protocol.py``); this serves the ones it hands on (query strings,
    chunked bodies, pipelined requests...) and ``POST /v2/.../infer``, where
    FastAPI's routing, dependency solving and middleware stack would cost several
    times what the inference itself does for small models. Every other request, and
    the OpenAPI description of these, goes to the FastAPI app unchanged.
    """

    PREFIX = "/api/inference/"

    def __init__(self, app: Any, worker: InferenceWorker) -> None:
        self.app = app
        self.worker = worker
        self.disconnects = DisconnectWatch()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        response: Response | None
        if (path.startswith(self.PREFIX) and "/" not in path[len(self.PREFIX):]
                and len(path) > len(self.PREFIX)):
            try:
                chunks = await _read_chunks(receive)
            except InferenceError as exc:
                response = error_response(exc)
            else:
                response = await self.disconnects.run(
                    inference_call(self.worker, path[len(self.PREFIX):],
                                   bodies.collapsed(chunks)), receive)
        elif (match := INFER_PATH.match(path)) is not None:
            try:
                body = await _read_body(receive)
            except InferenceError as exc:
                response = error_response(exc, protocol="v2")
            else:
                headers = {k.decode("latin-1"): v.decode("latin-1")
                           for k, v in scope.get("headers", ())}
                response = await self.disconnects.run(
                    v2_infer(self.worker, match.group(1), match.group(2), body, headers),
                    receive)
        else:
            await self.app(scope, receive, send)
            return
        if response is not None:
            await response(scope, receive, send)


async def _read_body(receive: Any) -> bytes:
    return bodies.joined(await _read_chunks(receive))


async def _read_chunks(receive: Any) -> list[bytes]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InferenceError("ERR_INVALID_REQUEST", "client disconnected")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks


def create_app(worker: InferenceWorker, manage_lifecycle: bool = True) -> Any:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await worker.start()
        yield
        if manage_lifecycle:
            await worker.stop()

    app = FastAPI(title="wrk-ai-inference", version=__version__, lifespan=lifespan,
                  default_response_class=JSON, docs_url=None, redoc_url=None)
    add_docs(app)

    def respond(request: Request, error: InferenceError) -> Response:
        """Each protocol keeps its own error body: v2's under /v2, the seed's elsewhere."""
        return error_response(error, protocol_of(request.url.path))

    @app.exception_handler(InferenceError)
    async def _inference_error(request: Request, exc: InferenceError) -> Response:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:5])
        return respond(request, InferenceError("ERR_INVALID_REQUEST", problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "ERR_INVALID_REQUEST")
        return respond(request, InferenceError(code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return respond(request, InferenceError.internal(exc))

    @app.get("/health", responses=errors(503))
    async def health() -> Response:
        body = await worker.get_health()
        return JSON(body, status_code=200 if worker.state is WorkerState.READY else 503)

    @app.post("/api/inference/{modelId}", openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": INFERENCE_REQUEST_SCHEMA}}}},
        responses=errors(400, 401, 404, 409, 413, 429, 500, 503, 504))
    async def inference(modelId: str, request: Request) -> Response:
        return await inference_call(worker, modelId, await request.body())

    @app.post("/api/models/{modelId}/load", responses=errors(401, 404, 422, 429, 503))
    async def load(modelId: str) -> Response:
        return JSON(await worker.load_model(modelId))

    @app.post("/api/models/{modelId}/unload", responses=errors(401, 404, 503))
    async def unload(modelId: str) -> Response:
        return JSON(await worker.unload_model(modelId))

    @app.get("/api/capacity", responses=errors(401, 404))
    async def capacity(modelId: str | None = Query(None)) -> Response:
        return JSON(await worker.check_capacity(modelId))

    @app.get("/api/models", responses=errors(401))
    async def models() -> Response:
        return JSON(await worker.list_models())

    @app.get("/api/models/{modelId}", responses=errors(401, 404))
    async def model(modelId: str) -> Response:
        return JSON(await worker.get_model(modelId))

    @app.get("/api/stats", responses=errors(401))
    async def stats() -> Response:
        return JSON(await worker.get_stats())

    @app.get("/metrics", response_class=Response, responses=errors(401))
    async def metrics() -> Response:
        return Response(worker.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(v2_router(worker))
    app.include_router(openai_router(worker))
    return GuardMiddleware(InferenceFastPath(app, worker), worker.settings.api_keys,
                           worker.settings.max_request_bytes)
