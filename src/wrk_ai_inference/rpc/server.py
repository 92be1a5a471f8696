"""The rack worker: InferenceWorker + the sidecar's RPC server + keys, status and topics.

Keys come from seeds persisted under ``<storeDir>/<rack>/`` (mode 0600), so the
public key survives restarts; the rack's model drives live in
``<storeDir>/<rack>/corestore``, and its request window in
``<storeDir>/<rack>/requests.journal`` (so a restart keeps at-most-once). Topics:
``ai-inference`` while running and ``ai-inference:<modelId>`` for each loaded model,
announced on load and re-announced every ``announceInterval``, withdrawn on unload
and shutdown.
The status file says ``state`` (starting, ready, draining, stopped), so a
supervisor can tell a stopped worker's leftover file from a live one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from ..config import Settings
from ..engine.request_journal import RequestJournal
from ..errors import InferenceError
from ..logs import get_logger
from ..models.manager import ModelState
from ..p2p.netconfig import NetConfig
from ..p2p.sidecar import Sidecar
from ..worker import InferenceWorker
from .methods import METHODS, dispatch
from .wire import error_reply

log = get_logger("rpc.server")

TOPIC = "ai-inference"


def model_topic(model_id: str) -> str:
    return f"{TOPIC}:{model_id}"


def load_seeds(store: Path) -> dict[str, str]:
    """Read or create the rack's seeds; only the store ever holds them."""
    path = store / "seeds.json"
    if path.is_file():
        seeds: dict[str, str] = orjson.loads(path.read_bytes())
        return seeds
    store.mkdir(parents=True, exist_ok=True)
    seeds = {"rpcSeed": secrets.token_hex(32), "dhtSeed": secrets.token_hex(32)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(seeds))
    return seeds


def internal_reply(exc: Exception) -> bytes:
    """The reply to a call whose handler failed: ERR_INTERNAL, no internals."""
    error = InferenceError.internal(exc)
    return error_reply(error.code, error.message)


class RackWorker:
    def __init__(self, settings: Settings, net: NetConfig, rack: str, env: str) -> None:
        self.settings = settings
        self.net = net
        self.rack = rack
        self.env = env
        self.topics: set[str] = set()
        self.status_path = Path(net.status_dir) / f"wrk-ai-inference.{rack}.json"
        store = Path(net.store_dir) / rack
        self.journal = RequestJournal(store / "requests.journal", settings.request_id_window)
        seeds = load_seeds(store)
        self.sidecar = Sidecar(net.sidecar_init(net.corestore(rack), seeds["dhtSeed"],
                                                seeds["rpcSeed"]))
        self.sidecar.on_call = self._on_call
        self.sidecar.on_call_error = internal_reply
        self.sidecar.after_restart(self._after_restart)
        self.worker = InferenceWorker(settings, self.sidecar)
        self.public_key: str | None = None
        self._topic_lock = asyncio.Lock()
        self._topic_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: what the status file says: starting, ready, draining, stopped
        self.state = "starting"

    async def _on_call(self, method: str, body: bytes, peer: str) -> bytes:
        if len(body) > self.settings.max_request_bytes:
            return error_reply("ERR_PAYLOAD_TOO_LARGE", f"payload exceeds maxRequestBytes "
                               f"({self.settings.max_request_bytes} bytes)")
        reply = await dispatch(self.worker, method, body)
        if method in ("loadModel", "unloadModel") and self._topic_task is not None:
            # answer after the DHT agrees, so a lookup right after the reply is current
            await asyncio.shield(self._topic_task)
        return reply

    async def _serve(self) -> None:
        result, _ = await self.sidecar.command(
            "rpc.serve", {"allow": self.net.allow or None, "methods": [*METHODS, "ping"]})
        self.public_key = str(result["publicKey"])
        self.worker.announce_transport("rpc", lambda: {
            "publicKey": self.public_key, "topics": sorted(self.topics), "rack": self.rack,
            "env": self.env})

    async def start(self) -> None:
        self.worker.request_ids.attach(self.journal)  # before the first call can arrive
        await self.sidecar.start()
        await self._serve()
        self._write_status()  # starting: the key is known, the models are not loaded yet
        self.worker.models.add_listener(self._on_model_change)
        await self.worker.start()
        await self.worker.wait_ready()
        self.state = "ready"
        await self._set_topics()
        log.info("rack worker ready", extra={"rack": self.rack, "env": self.env,
                                             "rpcPublicKey": self.public_key,
                                             "topics": sorted(self.topics)})

    def _on_model_change(self, model_id: str, state: ModelState) -> None:
        if self.worker.state.value not in ("ready", "starting"):
            return
        self._topic_task = asyncio.get_running_loop().create_task(self._set_topics())

    def _wanted(self) -> set[str]:
        return {TOPIC, *(model_topic(m) for m in self.worker.models.serving_ids())}

    async def _set_topics(self, wanted: set[str] | None = None) -> None:
        """Announce what is new, withdraw what is gone; serialised so updates keep order.

        ``wanted`` None means what the manager serves at the moment this update runs
        (under the lock), never what it served when the change was reported: with an
        eviction and a load in one tick, a set computed earlier would bring a
        withdrawn model's topic back."""
        async with self._topic_lock:
            if wanted is None:
                wanted = self._wanted() if self.state == "ready" else set()
            add, remove = sorted(wanted - self.topics), sorted(self.topics - wanted)
            self.topics = set(wanted)
            try:
                if remove:
                    await self.sidecar.command("dht.unannounce", {"topics": remove},
                                               timeout=60)
                if add:
                    await self.sidecar.command("dht.announce", {"topics": add}, timeout=60)
            except InferenceError as exc:
                log.error("topic update failed", extra={"error": exc.message, "add": add,
                                                        "remove": remove})
            self._write_status()

    async def _after_restart(self) -> None:
        await self._serve()
        topics = sorted(self.topics)
        if topics:
            await self.sidecar.command("dht.announce", {"topics": topics}, timeout=60)
        self._write_status()

    def _write_status(self) -> None:
        self.status_path.parent.mkdir(parents=True, exist_ok=True)
        status: dict[str, Any] = {
            "rack": self.rack, "env": self.env, "state": self.state,
            "rpcPublicKey": self.public_key,
            "rpcClientKey": self.sidecar.info.get("clientKey"),
            "topics": sorted(self.topics), "pid": os.getpid(), "sidecarPid": self.sidecar.pid,
            "sidecarRestarts": self.sidecar.restarts, "updatedAt": int(time.time() * 1000),
        }
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(status, option=orjson.OPT_INDENT_2))
        tmp.replace(self.status_path)

    async def stop(self) -> None:
        """Drain admitted calls, withdraw topics, close the DHT, stop the core."""
        self.state = "draining"
        self._write_status()
        await self.worker.drain(self.settings.shutdown_grace_period / 1000.0)
        await self._set_topics(set())
        await self.worker.stop()  # closes the sidecar
        self.worker.request_ids.close()
        self.state = "stopped"
        self._write_status()
        log.info("rack worker stopped", extra={"rack": self.rack})

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        beside = None
        if self.settings.rack_http:  # the console and the HTTP routes, on the same core
            from ..http.server import serve_beside

            http_done = asyncio.Event()
            beside = loop.create_task(serve_beside(self.worker, http_done))
        await self._stopping.wait()
        log.info("shutdown requested")
        await self.stop()
        if beside is not None:
            http_done.set()
            await beside


def serve_rack(settings: Settings, net: NetConfig, rack: str, env: str) -> None:
    async def main() -> None:
        await RackWorker(settings, net, rack, env).run_until_signalled()

    asyncio.run(main())
    # stopped and exiting: a second SIGTERM (a supervisor repeating itself) must not turn
    # the clean exit into a kill while the runtimes tear down (closing the loop restored
    # the default handlers)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
