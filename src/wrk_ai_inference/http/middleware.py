"""One pure-ASGI guard in front of every route: request id, API key, body size.

Pure ASGI (not BaseHTTPMiddleware) keeps the hot path free of extra tasks and
lets the size limit apply while the body is still streaming in.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..bodies import too_large
from ..errors import InferenceError
from ..logs import new_id, request_id_var
from .responses import error_response, protocol_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Paths served without credentials: what a load balancer probes, and the console's page
#: and assets (they hold no data; the page asks for a key and sends it with its calls).
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIX = "/console/"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIX)


def id_and_length(headers: Any) -> tuple[bytes | None, bytes | None]:
    """X-Request-Id and Content-Length from (lower-case name, value) pairs, in one pass."""
    given = length = None
    for key, value in headers:
        if key == b"x-request-id":
            given = value
        elif key == b"content-length":
            length = value
    return given, length


def request_id_for(given: bytes | None) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    text = given.decode("latin-1") if given else ""
    return text if _REQUEST_ID_RE.match(text) else new_id()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class GuardMiddleware:
    def __init__(self, app: ASGIApp, api_keys: list[str], max_body: int) -> None:
        self.app = app
        self.api_keys = [k.encode() for k in api_keys]
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given, length = id_and_length(scope.get("headers", ()))
        request_id = request_id_for(given)
        token = request_id_var.set(request_id)
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw_id)]
            await send(message)

        try:
            error = self.check(scope, length)
            if error is not None:
                response = error_response(error, protocol_of(scope.get("path", "")))
                await response(scope, receive, send_with_id)
                return
            # a declared length bounds the body (the HTTP parser stops there); only a
            # chunked body is counted as it streams in
            await self.app(scope, receive if length is not None else self._limited(receive),
                           send_with_id)
        finally:
            request_id_var.reset(token)

    def check(self, scope: Scope, length: bytes | None) -> InferenceError | None:
        """Why the request may not proceed (API key, declared size), or None."""
        if self.api_keys and not is_open(scope.get("path", "")) and not self._authorised(scope):
            return InferenceError("ERR_UNAUTHORIZED", "a valid API key is required: send "
                                  "'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return InferenceError("ERR_INVALID_REQUEST", "Content-Length is not a number")
            if declared > self.max_body:
                return self._too_large()
        return None

    def _authorised(self, scope: Scope) -> bool:
        presented = _header(scope, b"x-api-key")
        auth = _header(scope, b"authorization")
        if presented is None and auth is not None and auth[:7].lower() == b"bearer ":
            presented = auth[7:].strip()
        if presented is None:
            return False
        ok = False
        for key in self.api_keys:  # constant time, and no early exit across keys
            ok |= hmac.compare_digest(presented, key)
        return ok

    def _too_large(self) -> InferenceError:
        return too_large(self.max_body)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large()
            return message

        return wrapped
