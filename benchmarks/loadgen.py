"""A small closed-loop HTTP/1.1 load generator: asyncio, keep-alive, bounded.

Each of ``concurrency`` connections sends one request, waits for the whole
response, and sends the next, for ``warmup + duration`` seconds; only requests
that start after the warm-up are counted. It speaks just enough HTTP/1.1
(Content-Length bodies) to stay cheap, so that on a 2-core machine the client
takes as little CPU from the server as possible, and the same for every server.
Loopback only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop: the client's own CPU cost is shared with the server on 2 cores."""
    import uvloop

    return uvloop.run(coro)


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    wall_seconds: float = 0.0
    client_cores: float = 0.0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def build_request(path: str, body: bytes, host: str = "127.0.0.1",
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    else:
        raise RuntimeError("response without Content-Length")
    await reader.readexactly(length)
    return status


async def run_load(port: int, request: bytes, concurrency: int, duration: float,
                   warmup: float = 1.0, host: str = "127.0.0.1") -> LoadResult:
    assert host.startswith("127.") or host == "localhost", "loopback only"
    latencies: list[float] = []
    errors = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 26)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(request)
                status = await _read_response(reader)
                done = time.perf_counter()
                if sent >= measure_from:
                    if status == 200:
                        latencies.append(done - sent)
                    else:
                        errors += 1
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(concurrency))),
                           warmup + duration + 60)
    wall = time.perf_counter() - start
    client_cores = (time.process_time() - cpu_start) / wall
    if not latencies:
        return LoadResult(0, errors, duration, float("nan"), float("nan"), wall, client_cores)
    values = np.asarray(latencies) * 1000
    return LoadResult(len(values), errors, duration, float(np.percentile(values, 50)),
                      float(np.percentile(values, 99)), wall, client_cores)
