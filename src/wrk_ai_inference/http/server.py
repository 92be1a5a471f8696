"""Run the HTTP app under uvicorn with a drain-first shutdown.

On SIGTERM/SIGINT the worker first stops admitting (``/health`` turns 503,
new calls get ERR_NOT_READY) and lets admitted requests finish within
``shutdownGracePeriod``; only then does uvicorn close its sockets. A second
signal skips the wait. The process exits 0 after a clean drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from ..config import Settings
from ..logs import get_logger
from ..p2p.netconfig import NetConfig
from ..p2p.sidecar import Sidecar
from ..worker import InferenceWorker
from .app import create_app
from .protocol import inference_protocol

log = get_logger("http")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker: InferenceWorker) -> None:
        super().__init__(config)
        self.worker = worker
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it and exit non-zero.
        if self._draining or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        log.info("shutdown requested", extra={"signal": signal.Signals(sig).name})
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain())  # type: ignore[union-attr]
                                        )

    async def _drain(self) -> None:
        await self.worker.drain(self.worker.settings.shutdown_grace_period / 1000.0)
        self.should_exit = True


class _EmbeddedServer(uvicorn.Server):
    """Uvicorn inside a loop someone else runs (rack mode): the owner handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: Any, worker: InferenceWorker, settings: Settings) -> uvicorn.Config:
    """Uvicorn's settings for either way of serving, and the worker told where HTTP is
    (its live feed shows the address)."""
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("HTTP is listening beyond loopback", extra={"host": settings.host,
                                                              "auth": bool(settings.api_keys)})
    worker.announce_transport("http", lambda: {"host": settings.host, "port": settings.port})
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                          access_log=False, loop="auto", http=inference_protocol(app, worker),
                          timeout_graceful_shutdown=5, server_header=False,
                          proxy_headers=False)


async def serve_beside(worker: InferenceWorker, stopping: asyncio.Event) -> None:
    """Every HTTP route (the console included) for a worker that another transport runs
    (``rackHttp``), until ``stopping`` is set; the worker's lifecycle stays its owner's."""
    settings = worker.settings
    server = _EmbeddedServer(_config(create_app(worker, manage_lifecycle=False), worker,
                                     settings))

    async def run() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn's answer to a port it cannot bind: RPC goes on
            log.error("HTTP beside RPC did not start", extra={"host": settings.host,
                                                              "port": settings.port})

    task = asyncio.get_running_loop().create_task(run())
    log.info("serving HTTP beside RPC", extra={"host": settings.host, "port": settings.port})
    try:
        await stopping.wait()
    finally:
        server.should_exit = True
        await task


def serve(settings: Settings, net: NetConfig | None = None) -> None:
    """``net`` with a bootstrap gives the worker a sidecar, started on first use, for
    models whose files come from a Hyperdrive."""
    sidecar = None
    if net is not None and net.dht_opts.bootstrap:
        sidecar = Sidecar(net.sidecar_init(net.corestore()))
    worker = InferenceWorker(settings, sidecar)
    config = _config(create_app(worker), worker, settings)
    log.info("starting HTTP worker", extra={"host": settings.host, "port": settings.port,
                                           "modelRepository": settings.model_repository})
    DrainingServer(config, worker).run()
