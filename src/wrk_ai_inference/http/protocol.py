"""POST /api/inference/{modelId} answered at the HTTP protocol: one parse, one task, one write.

uvicorn's httptools protocol serves every request through ASGI: a scope, a
request-response cycle with its own Event and task, two receive/send messages
checked header by header, and two socket writes. For a small model that costs
the event loop about as much as the whole inference. This subclass serves the
worker's hot route itself, through the same ``inference_call`` and guard checks
as the ASGI route, and writes the response in one piece. Anything unusual about
a request (another route or method, a query string or percent-escape, no
Content-Length, ``Expect: 100-continue``, an upgrade, a request pipelined
behind another, a guard check that fails) goes to uvicorn and the ASGI app
unchanged, so this file only has to be right about the plain case.

While a request is served here it stands in for uvicorn's cycle
(``response_complete``, ``keep_alive``, ``disconnected``), so uvicorn's own
keep-alive timer, pipelining queue, graceful shutdown and disconnect handling
apply to it as to any other request. A client that disconnects cancels its
request at once, freeing its slot.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..errors import InferenceError
from ..logs import get_logger, request_id_var
from ..worker import InferenceWorker
from .app import inference_call
from .middleware import GuardMiddleware, id_and_length, request_id_for
from .responses import error_response

log = get_logger("http")

_PREFIX = b"/api/inference/"


class _NoEvent:
    """uvicorn sets its cycle's message event on disconnect; nothing waits on ours."""

    def set(self) -> None:
        return None


class _FastRequest:
    """One request served here; also uvicorn's view of the connection's current cycle."""

    __slots__ = ("body", "disconnected", "keep_alive", "model_id", "request_id",
                 "response_complete", "task")
    message_event = _NoEvent()

    def __init__(self, model_id: str, request_id: str, keep_alive: bool) -> None:
        self.model_id = model_id
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

    # ---- parser callbacks -------------------------------------------------------------
    def on_headers_complete(self) -> None:
        fast = self._take()
        if fast is None:
            super().on_headers_complete()
            return
        self._receiving = fast
        self.cycle = fast  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        if self._receiving is None:
            super().on_body(body)
        else:
            self._receiving.body.append(body)

    def on_message_complete(self) -> None:
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
        if (self.expect_100_continue or not url.startswith(_PREFIX) or len(url) == len(_PREFIX)
                or self.parser.get_method() != b"POST" or b"?" in url or b"%" in url
                or b"/" in url[len(_PREFIX):] or self.parser.should_upgrade()):
            return None
        given, length = id_and_length(self.headers)
        if length is None:
            return None  # chunked: the ASGI route counts its bytes as they come
        path = url.decode("ascii")
        if self.guard.check({"headers": self.headers, "path": path}, length) is not None:
            return None  # the ASGI route answers with the error
        http_version = self.parser.get_http_version()
        return _FastRequest(path[len(_PREFIX):], request_id_for(given),
                            http_version != "1.0" and self.parser.should_keep_alive())

    async def _serve(self, fast: _FastRequest) -> None:
        token = request_id_var.set(fast.request_id)
        try:
            response = await inference_call(self.worker, fast.model_id, b"".join(fast.body))
        except asyncio.CancelledError:
            if not fast.disconnected:
                raise
            log.info("client disconnected; request cancelled")
            return
        except Exception as exc:  # inference_call answers InferenceError itself
            log.exception("unhandled error")
            response = error_response(InferenceError.internal(exc))
        finally:
            request_id_var.reset(token)
        self._respond(fast, response)

    def _respond(self, fast: _FastRequest, response: Response) -> None:
        if fast.disconnected or self.transport.is_closing():
            return
        parts: list[bytes | memoryview] = [STATUS_LINE[response.status_code]]
        for name, value in (*self.server_state.default_headers, *response.raw_headers):
            parts += (name, b": ", value, b"\r\n")
        parts += (b"x-request-id: ", fast.request_id.encode(), b"\r\n")
        if not fast.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", response.body)
        self.transport.write(b"".join(parts))
        fast.response_complete = True
        if not fast.keep_alive:
            self.transport.close()
        self.on_response_complete()


def inference_protocol(app: Any, worker: InferenceWorker) -> type[InferenceProtocol]:
    """The protocol class for uvicorn's ``http=`` setting, bound to this worker and guard."""
    assert isinstance(app, GuardMiddleware)
    return type("BoundInferenceProtocol", (InferenceProtocol,), {"worker": worker, "guard": app})
