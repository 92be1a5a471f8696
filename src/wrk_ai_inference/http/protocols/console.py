"""The web console: its page and assets from the package, and the live feed it reads.

The page, script and styles (``http/console/``) hold no data, so they are served without
a key: the page asks for one when the worker has ``apiKeys`` and sends it with every
call. What the console shows comes from the live feed (``GET /api/live``, server-sent
events from ``InferenceWorker.listen``) and its actions are the public routes (load,
unload, chat, embeddings, inference), under the same keys as any client: the console
can do nothing a client cannot.

The page's Content-Security-Policy allows nothing but this worker: air-gapped hosts get
the whole console, and no script can send data elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator
from importlib.resources import files

from fastapi.responses import Response

from ...errors import InferenceError
from ...worker import InferenceWorker
from ..middleware import OPEN_PREFIX
from ..routing import Call, EventStream, Route, Table

#: the console's files, by name, with their media types
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: blob:; font-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


def _load_assets() -> dict[str, tuple[bytes, str, str]]:
    folder = files("wrk_ai_inference.http") / "console"
    assets = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            body = item.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            assets[item.name] = (body, _TYPES[suffix], etag)
    return assets


_ASSETS = _load_assets()


def _asset(name: str, call: Call) -> Response:
    found = _ASSETS.get(name)
    if found is None:
        raise InferenceError("ERR_NOT_FOUND", f"the console has no file {name!r}")
    body, media_type, etag = found
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": _CSP}
    if call.header("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


async def _page(worker: InferenceWorker, call: Call) -> Response:
    return _asset("index.html", call)


async def _file(worker: InferenceWorker, call: Call) -> Response:
    return _asset(call.params["name"], call)


async def _live(worker: InferenceWorker, call: Call) -> Response:
    """GET /api/live: one ``data:`` event per message of the feed."""
    messages = worker.listen()
    first = await anext(messages)  # a refused listener is an error reply, not a stream

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: " + first + b"\n\n"
            async for message in messages:
                yield b"data: " + message + b"\n\n"
        finally:
            await messages.aclose()

    return EventStream(events())


TABLE = Table("seed", "Web console", (
    Route("GET", "/", _page, summary="The web console (a page for browsers)"),
    Route("GET", OPEN_PREFIX + "{name}", _file, summary="The console's script and styles",
          responses=(404,)),
    Route("GET", "/api/live", _live, summary="Live feed: the worker's state and figures "
          "each second (server-sent events)", responses=(401, 429)),
))
