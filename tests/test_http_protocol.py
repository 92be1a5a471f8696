"""The inference route served at the protocol level: same answers as the ASGI route,
and everything unusual handed to uvicorn. Real uvicorn on 127.0.0.1, raw sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from wrk_ai_inference.config import Settings
from wrk_ai_inference.http.app import create_app
from wrk_ai_inference.http.protocol import InferenceProtocol, inference_protocol
from wrk_ai_inference.worker import InferenceWorker

from .helpers import free_port, make_repo, slow_body, slow_iterations

ROW = [float(i % 16) for i in range(64)]


class Served:
    def __init__(self, port: int, worker: InferenceWorker,
                 protocol: type[InferenceProtocol]) -> None:
        self.port = port
        self.worker = worker
        self.fast = 0  # requests the protocol answered itself
        serve = protocol._serve

        async def counting(proto: InferenceProtocol, fast: Any) -> None:
            self.fast += 1
            await serve(proto, fast)

        protocol._serve = counting  # type: ignore[method-assign, assignment]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    repo = make_repo(tmp_path, {"digits": "digits", "slow": "slow"})
    worker = InferenceWorker(Settings(modelRepository=str(repo),  # type: ignore[arg-type]
                                      preload=["digits", "slow"], apiKeys=["key-0001"]))
    app = create_app(worker)
    protocol = inference_protocol(app, worker)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            access_log=False, http=protocol, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    await worker.wait_ready()
    try:
        yield Served(port, worker, protocol)
    finally:
        server.should_exit = True
        await task


def request(path: str, body: Any, *headers: str, version: str = "1.1") -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/{version}", "Host: x", "Authorization: Bearer key-0001",
             f"Content-Length: {len(raw)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]
                                                     if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, json.loads(body)


async def exchange(port: int, *requests: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """Write every request at once (pipelined), then read as many responses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(requests))
        return [await read_response(reader) for _ in requests]
    finally:
        writer.close()


def stable(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items()
            if k not in ("inferenceId", "timestamp", "processingTime")}


async def test_answers_equal_the_asgi_route_and_only_plain_requests_are_taken(
        served: Served) -> None:
    body = {"inputData": [ROW]}
    [(fast_status, fast_headers, fast_body)] = await exchange(
        served.port, request("/api/inference/digits", body, "X-Request-Id: abc-1"))
    assert served.fast == 1
    # a query string sends the same request through uvicorn and the ASGI app
    [(asgi_status, asgi_headers, asgi_body)] = await exchange(
        served.port, request("/api/inference/digits?via=asgi", body, "X-Request-Id: abc-2"))
    assert served.fast == 1
    assert fast_status == asgi_status == 200
    assert stable(fast_body) == stable(asgi_body)
    assert fast_body["result"]["predictions"][0][0]["label"] is not None
    assert (fast_headers["x-request-id"], asgi_headers["x-request-id"]) == ("abc-1", "abc-2")
    assert set(fast_headers) == set(asgi_headers)  # date, content type and length, id
    assert fast_headers["content-type"] == "application/json"

    for path in ("/api/inference/nope", "/api/inference/nope?via=asgi"):
        [(status, headers, error)] = await exchange(served.port, request(path, body))
        assert (status, error["error"]) == (404, "ERR_MODEL_NOT_FOUND")
        assert len(headers["x-request-id"]) > 8  # a new id when none was given
    [(status, _, error)] = await exchange(served.port, request("/api/inference/digits", b"{"))
    assert (status, error["error"]) == (400, "ERR_INVALID_REQUEST")
    assert served.fast == 3


async def test_guard_failures_and_odd_requests_go_to_the_asgi_route(served: Served) -> None:
    body = {"inputData": [ROW]}
    no_key = (f"POST /api/inference/digits HTTP/1.1\r\nHost: x\r\n"
              f"Content-Length: {len(json.dumps(body))}\r\n\r\n{json.dumps(body)}").encode()
    [(status, headers, error)] = await exchange(served.port, no_key)
    assert (status, error["error"], headers["www-authenticate"]) == (
        401, "ERR_UNAUTHORIZED", "Bearer")
    chunk = json.dumps(body).encode()
    chunked = (b"POST /api/inference/digits HTTP/1.1\r\nHost: x\r\n"
               b"Authorization: Bearer key-0001\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    [(status, _, _)] = await exchange(served.port, chunked)
    assert status == 200
    [(status, _, _)] = await exchange(served.port, request("/api/inference/dig%69ts", body))
    assert status == 200
    assert served.fast == 0


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    # the first takes a while: answered concurrently, the others would overtake it
    slow = slow_body(slow_iterations(0.3))
    first, second = ({"inputData": [[float(v)] * 64]} for v in (1, 2))
    responses = await exchange(served.port,
                               request("/api/inference/slow", slow, "X-Request-Id: r0"),
                               request("/api/inference/digits", first, "X-Request-Id: r1"),
                               request("/api/inference/digits", second, "X-Request-Id: r2"))
    assert [h["x-request-id"] for _, h, _ in responses] == ["r0", "r1", "r2"]
    assert [status for status, _, _ in responses] == [200, 200, 200]
    alone = [(await exchange(served.port, request("/api/inference/digits", b)))[0][2]
             for b in (first, second)]
    assert [stable(r[2]) for r in responses[1:]] == [stable(a) for a in alone]


@pytest.mark.parametrize("header, version", [("Connection: close", "1.1"), ("", "1.0")])
async def test_connection_close_is_honoured(served: Served, header: str, version: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        extra = (header,) if header else ()
        writer.write(request("/api/inference/digits", {"inputData": [ROW]}, *extra,
                             version=version))
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
    finally:
        writer.close()
    assert served.fast == 1


async def test_a_client_that_leaves_frees_its_slot_at_once(served: Served) -> None:
    iterations = 20 * slow_iterations(1.0)
    _reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(request("/api/inference/slow", slow_body(iterations)))
    capacity = served.worker.capacity
    for _ in range(200):
        if capacity.running == 1:
            break
        await asyncio.sleep(0.01)
    assert capacity.running == 1
    writer.close()
    for _ in range(200):
        if capacity.running == 0:
            break
        await asyncio.sleep(0.01)
    assert capacity.running == 0 and served.fast == 1
