"""The inference routes answered at the HTTP protocol: one parse, one task, one write.

uvicorn's httptools protocol serves every request through ASGI: a scope, a
request-response cycle with its own Event and task, two receive/send messages
checked header by header, and two socket writes. For a small model that costs
the event loop about as much as the whole inference. This subclass serves the
routes the protocol tables mark ``fast`` (``POST /api/inference/{modelId}``,
v2's infer, OpenAI's completions) itself, through the same route handlers and
guard checks as the ASGI app, and writes a reply in one piece (a stream in HTTP
chunks). Anything unusual about a request (another route or method, a query
string or percent-escape, no Content-Length, ``Expect: 100-continue``, an
upgrade, a request pipelined behind another, a guard check that fails) goes to
uvicorn and the ASGI app unchanged, so this file only has to be right about the
plain case.

While a request is served here it stands in for uvicorn's cycle
(``response_complete``, ``keep_alive``, ``disconnected``), so uvicorn's own
keep-alive timer, pipelining queue, graceful shutdown and disconnect handling
apply to it as to any other request. A client that disconnects cancels its
request at once, freeing its slot.

Every connection (either route) closes with a lingering close: a client that
sends its whole body before reading (Python's urllib, most simple clients) would
get a connection reset instead of the 413 it was sent if the socket closed with
its body still arriving. So when a response is written before the request's body
has fully arrived, the connection half-closes, reads and discards what the
client still sends (at most ``LINGER_BYTES`` for ``LINGER_S``), and only then
closes, as nginx does.

A request the parser refuses (bytes beyond ASCII in the path, a broken request
line) gets the worker's JSON error body, ERR_INVALID_REQUEST, like any other bad
request, instead of uvicorn's plain-text 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import httptools
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .. import bodies
from ..errors import InferenceError
from ..logs import get_logger, request_id_var
from ..worker import InferenceWorker
from .middleware import GuardMiddleware, id_and_length, request_id_for
from .protocols import TABLES
from .responses import error_response
from .routing import Call, EventStream, Route, Table, answer

log = get_logger("http")

#: the routes served here, in the order they are tried (the seed API's first)
_FAST: list[tuple[Table, Route]] = [(t, r) for t in TABLES for r in t.routes if r.fast]
#: What a lingering close reads and discards at most, and for how long.
LINGER_BYTES = 1 << 30
LINGER_S = 10.0


def _fast_route(path: str) -> tuple[Table, Route, dict[str, str]] | None:
    for table, route in _FAST:
        found = route.pattern.match(path)
        if found is not None:
            return table, route, found.groupdict()
    return None


class _LingeringTransport:
    """The connection's transport, whose ``close()`` lingers while a body is arriving.

    The hot methods are the real transport's bound methods, so writes cost nothing
    more; anything else is looked up on the real transport.
    """

    def __init__(self, transport: asyncio.Transport, protocol: InferenceProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def close(self) -> None:
        self._protocol._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _NoEvent:
    """uvicorn sets its cycle's message event on disconnect; nothing waits on ours."""

    def set(self) -> None:
        return None


class _FastRequest:
    """One request served here; also uvicorn's view of the connection's current cycle."""

    __slots__ = ("body", "disconnected", "headers", "keep_alive", "params", "request_id",
                 "response_complete", "route", "table", "task")
    message_event = _NoEvent()

    def __init__(self, table: Table, route: Route, params: dict[str, str],
                 headers: list[tuple[bytes, bytes]], request_id: str, keep_alive: bool) -> None:
        self.table = table
        self.route = route
        self.params = params
        self.headers = headers
        self.request_id = request_id
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.response_complete = False
        self.disconnected = False
        self.task: asyncio.Task[None] | None = None


class InferenceProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the inference route served directly."""

    worker: InferenceWorker
    guard: GuardMiddleware

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receiving: _FastRequest | None = None
        self._real: asyncio.Transport | None = None
        self._body_pending = False  # a request's body is still arriving
        self._linger: asyncio.TimerHandle | None = None
        self._linger_left = 0

    # ---- the lingering close ----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._real = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]

    def _close(self) -> None:
        real = self._real
        assert real is not None
        if self._linger is not None or real.is_closing():
            return
        if not self._body_pending:
            real.close()
            return
        # The answer is written; let the client finish sending, so that it reads it.
        self._linger = self.loop.call_later(LINGER_S, real.close)
        self._linger_left = LINGER_BYTES
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if real.can_write_eof():
                real.write_eof()
        self.flow.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._linger is None:
            super().data_received(data)
            return
        assert self._real is not None
        self._linger_left -= len(data)
        if self._linger_left < 0:
            self._real.close()
            return
        try:  # the parser finds the body's end (on_message_complete closes then)
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._real.close()

    def send_400_response(self, msg: str) -> None:
        """The parser gave up on the request: answer in the JSON error shape and close."""
        self._body_pending = False  # nothing more is read
        # called from uvicorn's `except httptools.HttpParserError` in data_received
        error = sys.exc_info()[1]
        reason = ("the request path has bytes beyond ASCII: percent-escape them"
                  if isinstance(error, httptools.HttpParserInvalidURLError)
                  else "the request is not valid HTTP/1.1")
        self._write(error_response(InferenceError("ERR_INVALID_REQUEST", reason)), None, False)
        self.transport.close()

    # ---- parser callbacks -------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._body_pending = True
        fast = self._take()
        if fast is None:
            super().on_headers_complete()
            return
        self._receiving = fast
        self.cycle = fast  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if self._linger is not None:
            return
        if self._receiving is None:
            super().on_body(body)
        else:
            self._receiving.body.append(body)

    def on_message_complete(self) -> None:
        self._body_pending = False
        if self._linger is not None:
            assert self._real is not None
            self._real.close()
            return
        fast = self._receiving
        if fast is None:
            super().on_message_complete()
            return
        self._receiving = None
        task = self.loop.create_task(self._serve(fast))
        fast.task = task
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        fast = self.cycle if isinstance(self.cycle, _FastRequest) else None
        self._receiving = None
        super().connection_lost(exc)  # marks the current cycle disconnected
        if fast is not None and fast.disconnected and fast.task is not None:
            fast.task.cancel()

    # ---- the route --------------------------------------------------------------------
    def _take(self) -> _FastRequest | None:
        """The request as served here, or None when uvicorn and the ASGI app should."""
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a request still being answered
        url = self.url
        if (self.expect_100_continue or self.parser.get_method() != b"POST" or b"?" in url
                or b"%" in url or self.parser.should_upgrade()):
            return None
        path = url.decode("ascii")
        matched = _fast_route(path)
        if matched is None:
            return None
        given, length = id_and_length(self.headers)
        if length is None:
            return None  # chunked: the ASGI route counts its bytes as they come
        if self.guard.check({"headers": self.headers, "path": path}, length) is not None:
            return None  # the ASGI route answers with the error
        http_version = self.parser.get_http_version()
        return _FastRequest(*matched, self.headers,
                            request_id_for(given),
                            http_version != "1.0" and self.parser.should_keep_alive())

    async def _serve(self, fast: _FastRequest) -> None:
        token = request_id_var.set(fast.request_id)
        try:
            call = Call(fast.params, bodies.collapsed(fast.body), {}, fast.headers)
            response = await answer(fast.table, fast.route, self.worker, call)
            if isinstance(response, EventStream):
                await self._stream(fast, response)
                return
        except asyncio.CancelledError:
            if not fast.disconnected:
                raise
            log.info("client disconnected; request cancelled")
            return
        except Exception as exc:  # answer() turns InferenceError into a reply itself
            log.exception("unhandled error")
            response = error_response(InferenceError.internal(exc), fast.table.protocol)
        finally:
            request_id_var.reset(token)
        self._respond(fast, response)

    async def _stream(self, fast: _FastRequest, reply: EventStream) -> None:
        """A streamed reply in HTTP/1.1 chunks, each written as it comes; a lost
        connection cancels this task, which closes the chunks' generator."""
        transport = self.transport
        self._write_head(reply, fast.request_id, fast.keep_alive,
                         b"transfer-encoding: chunked\r\n")
        async with contextlib.aclosing(reply.chunks) as chunks:
            async for chunk in chunks:
                if fast.disconnected or transport.is_closing():
                    return
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if self.flow.write_paused:
                    await self.flow.drain()
        if fast.disconnected or transport.is_closing():
            return
        transport.write(b"0\r\n\r\n")
        self._finished(fast)

    def _respond(self, fast: _FastRequest, response: Response) -> None:
        if fast.disconnected or self.transport.is_closing():
            return
        self._write(response, fast.request_id, fast.keep_alive)
        self._finished(fast)

    def _finished(self, fast: _FastRequest) -> None:
        fast.response_complete = True
        if not fast.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _head(self, response: Response, request_id: str | None, keep_alive: bool,
              extra: bytes = b"") -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = [STATUS_LINE[response.status_code]]
        for name, value in (*self.server_state.default_headers, *response.raw_headers):
            parts += (name, b": ", value, b"\r\n")
        if request_id is not None:
            parts += (b"x-request-id: ", request_id.encode(), b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (extra, b"\r\n")
        return parts

    def _write_head(self, response: Response, request_id: str | None, keep_alive: bool,
                    extra: bytes = b"") -> None:
        self.transport.write(b"".join(self._head(response, request_id, keep_alive, extra)))

    def _write(self, response: Response, request_id: str | None, keep_alive: bool) -> None:
        """The response in one socket write: status line, headers, body."""
        parts = self._head(response, request_id, keep_alive)
        parts.append(response.body)
        self.transport.write(b"".join(parts))


def inference_protocol(app: Any, worker: InferenceWorker) -> type[InferenceProtocol]:
    """The protocol class for uvicorn's ``http=`` setting, bound to this worker and guard."""
    assert isinstance(app, GuardMiddleware)
    return type("BoundInferenceProtocol", (InferenceProtocol,), {"worker": worker, "guard": app})
