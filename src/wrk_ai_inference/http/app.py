"""The HTTP app: FastAPI with every protocol's route table, behind the guard.

The tables (``protocols/``) hold the routes; FastAPI registers them for ``/docs``
and serves the requests the protocol-level server (``protocol.py``) hands on.
Errors anywhere (a route FastAPI does not know, a validation problem, a bug) are
answered in the error shape of the protocol the path belongs to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import InferenceError
from ..logs import get_logger
from ..worker import InferenceWorker
from .docs import add_docs
from .middleware import GuardMiddleware
from .protocols import TABLES
from .responses import JSON, error_response, protocol_of
from .routing import register

log = get_logger("http")

_STATUS_CODES = {404: "ERR_NOT_FOUND", 405: "ERR_METHOD_NOT_ALLOWED", 413: "ERR_PAYLOAD_TOO_LARGE"}


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

    for table in TABLES:
        register(app, table, worker)
    return GuardMiddleware(app, worker.settings.api_keys, worker.settings.max_request_bytes)
