"""A Python client for rack workers: by public key or by DHT topic.

It runs a sidecar of its own, so it speaks exactly what a Node orchestrator
speaks. Connections are pooled by the sidecar and linger 300 s
after their last request (as hp-svc-facs-net sets it); a connection silent for
``connection_timeout_ms`` (keep-alives included) is dropped, so a call to a
worker that crashed fails in seconds with ERR_RPC_UNAVAILABLE.

    async with RpcClient(bootstrap=["127.0.0.1:49737"]) as client:
        result = await client.request_topic("ai-inference:digits", "runInference",
                                            {"modelId": "digits", "inputData": [...]})
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from ..errors import InferenceError
from ..p2p.netconfig import bind_host_for
from ..p2p.sidecar import Sidecar
from .wire import parse_reply


class RpcClient:
    def __init__(self, bootstrap: list[str] | None, seed: str | None = None,
                 pool_linger_ms: int = 300_000, timeout_ms: int = 30_000,
                 host: str | None = None, keep_alive_ms: int = 2_000,
                 connection_timeout_ms: int = 7_000) -> None:
        self.timeout_ms = timeout_ms
        self._sidecar = Sidecar({"dhtSeed": seed, "bootstrap": bootstrap,
                                 "host": host or bind_host_for(bootstrap),
                                 "keepAlive": keep_alive_ms, "storeDir": None,
                                 "rpc": {"seed": None, "poolLinger": pool_linger_ms,
                                         "connectionTimeout": connection_timeout_ms,
                                         "announceInterval": 300_000}})

    @property
    def client_key(self) -> str:
        return str(self._sidecar.info.get("clientKey"))

    async def __aenter__(self) -> RpcClient:
        await self._sidecar.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sidecar.close()

    async def request_raw(self, key: str, method: str, body: bytes,
                          timeout_ms: int | None = None) -> bytes:
        timeout = timeout_ms or self.timeout_ms
        _, reply = await self._sidecar.command(
            "rpc.request", {"key": key, "method": method, "timeout": timeout}, body,
            timeout=timeout / 1000 + 5)
        return reply

    async def request(self, key: str, method: str, payload: Any = None,
                      timeout_ms: int | None = None) -> Any:
        """Call ``method``; an ``[HRPC_ERR]`` reply raises InferenceError with its code."""
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        return parse_reply(await self.request_raw(key, method, body, timeout_ms))

    async def lookup(self, topic: str) -> list[str]:
        result, _ = await self._sidecar.command("dht.lookup", {"topic": topic}, timeout=30)
        return list(result.get("peers", []))

    async def request_topic(self, topic: str, method: str, payload: Any = None,
                            timeout_ms: int | None = None) -> Any:
        """Look the topic up and call one of the workers announcing it, chosen at random."""
        peers = await self.lookup(topic)
        if not peers:
            raise InferenceError("ERR_RPC_UNAVAILABLE", f"no worker announces {topic!r}")
        return await self.request(random.choice(peers), method, payload, timeout_ms)
