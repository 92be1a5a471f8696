"""One route table per protocol, served the same way by both HTTP servers.

Each protocol module (``protocols/seed.py``, ``protocols/v2.py``,
``protocols/openai.py``) declares its routes once: method, path, handler and what
the OpenAPI description says of them. A handler takes the worker and a ``Call``
(path parameters, query, headers, body) and returns a reply: a Starlette
``Response`` (status, headers, body) or an ``EventStream`` (status, headers, an
async iterator of chunks). The protocol-level server (``protocol.py``) answers the
routes marked ``fast`` itself; FastAPI registers every route of every table
(``register``), for ``/docs`` and for the requests the fast server hands on.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from ..bodies import Body, collapsed
from ..errors import InferenceError
from ..logs import transport_var
from .disconnect import DisconnectWatch
from .responses import error_response
from .schemas import errors

if TYPE_CHECKING:
    from ..worker import InferenceWorker


@dataclass(slots=True)
class Call:
    """One request as a handler sees it, from either server."""

    params: dict[str, str]
    body: Body = b""
    query: dict[str, str] = field(default_factory=dict)
    #: (lower-case name, value) pairs as they arrived
    raw_headers: Any = ()  # an ASGI scope's list, or httptools' headers

    def header(self, name: str) -> str | None:
        wanted = name.encode("latin-1")
        for key, value in self.raw_headers:
            if key == wanted:
                return bytes(value).decode("latin-1")
        return None


class EventStream(Response):
    """A streamed reply (server-sent events): status, headers and chunks.

    Under ASGI the disconnect watch (``disconnect.py``) cancels the task that streams when
    the client goes away, which closes the chunks' generator (and with it the
    generation); the protocol-level server cancels the same way when the connection is
    lost.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:
        # not Response.__init__: it would declare a Content-Length for an empty body
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _STREAMS.run(self._send(send), receive)  # None when the client went away

    async def _send(self, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async with contextlib.aclosing(self.chunks) as chunks:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the connection broke mid-write: the chunks are closed above


#: watches streamed replies under ASGI: a client that leaves cancels its stream
_STREAMS = DisconnectWatch()


Handler = Callable[["InferenceWorker", Call], Awaitable[Response]]

_PARAM_RE = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "/api/inference/{modelId}"
    handler: Handler
    #: answered by the protocol-level server when the request is plain (a declared
    #: length, no query string): the routes whose speed matters
    fast: bool = False
    summary: str = ""
    query: tuple[str, ...] = ()  # optional query parameters (strings)
    responses: tuple[int, ...] = ()  # documented error statuses
    openapi: dict[str, Any] | None = None  # extra OpenAPI for the operation
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        regex = _PARAM_RE.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", self.path)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def params(self) -> list[str]:
        return _PARAM_RE.findall(self.path)


@dataclass(frozen=True)
class Table:
    """A protocol's routes and the error shape it answers in."""

    protocol: str  # "seed" | "v2" | "openai" | "anthropic": the error shape (error_response)
    tag: str
    routes: tuple[Route, ...]


async def answer(table: Table, route: Route, worker: InferenceWorker, call: Call
                 ) -> Response:
    """The route's reply; an ``InferenceError`` it raises becomes the protocol's error.
    The request's task is its own, so the transport it names needs no reset."""
    transport_var.set(table.protocol)
    try:
        return await route.handler(worker, call)
    except InferenceError as exc:
        return error_response(exc, table.protocol)


def register(app: FastAPI, table: Table, worker: InferenceWorker) -> None:
    """Every route of ``table`` as a FastAPI route: the same handler, described for /docs."""
    watch = DisconnectWatch()
    for route in table.routes:
        app.add_api_route(route.path, _endpoint(table, route, worker, watch),
                          methods=[route.method], summary=route.summary or None,
                          tags=[table.tag], responses=errors(*route.responses),
                          openapi_extra=route.openapi, response_class=Response)


def _endpoint(table: Table, route: Route, worker: InferenceWorker, watch: DisconnectWatch
              ) -> Callable[..., Awaitable[Response]]:
    async def endpoint(request: Request, **params: Any) -> Response:
        chunks = ([chunk async for chunk in request.stream() if chunk]
                  if route.method == "POST" else [])
        query = {k: v for k, v in params.items() if k in route.query and v is not None}
        call = Call({k: v for k, v in params.items() if k not in route.query},
                    collapsed(chunks) if chunks else b"", query, request.scope["headers"])
        transport_var.set(table.protocol)  # for a stream, sent from this task's context
        reply = await watch.run(answer(table, route, worker, call), request.receive)
        return reply if reply is not None else Response(status_code=499)

    # FastAPI reads the signature: path parameters and query parameters, documented
    parameters = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    annotation=Request)]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str)
                   for name in route.params]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                     annotation=str | None, default=Query(None))
                   for name in route.query]
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    endpoint.__name__ = f"{table.protocol}_{route.method.lower()}_{route.path}"
    return endpoint
