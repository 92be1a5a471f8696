"""Fault injection, each bounded: a client that disappears, model files that are corrupt
or truncated, a load that fails half-way, SIGTERM during load in rack mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from wrk_ai_inference.rpc.client import RpcClient

from .helpers import (
    EXAMPLES,
    add_broken_model,
    make_repo,
    running_worker,
    slow_body,
    slow_iterations,
)
from .rack_helpers import Rack, local_testnet, orchestrate


# served by the protocol's own route, and (a query string) by uvicorn and the ASGI app
@pytest.mark.parametrize("path", ["/api/inference/slow", "/api/inference/slow?via=asgi"])
def test_client_disconnect_frees_its_slot_and_stops_its_run(tmp_path: Path, path: str
                                                             ) -> None:
    repo = make_repo(tmp_path / "repo", {"slow": "slow"})
    iterations = 20 * slow_iterations(1.0)  # twenty seconds of work if nobody stopped it
    with running_worker(repo, tmp_path / "w.log", preload=["slow"]) as w:
        body = json.dumps(slow_body(iterations)).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        with socket.create_connection(("127.0.0.1", w.port)) as sock:
            sock.sendall(request)
            time.sleep(0.5)
            load = httpx.get(f"{w.url}/api/capacity").json()["currentLoad"]
            assert load == 1
        # the client is gone: the slot comes back and the run stops
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if httpx.get(f"{w.url}/api/capacity").json()["currentLoad"] == 0:
                break
            time.sleep(0.05)
        assert httpx.get(f"{w.url}/api/capacity").json()["currentLoad"] == 0
        proc = psutil.Process(w.proc.pid)
        time.sleep(0.5)
        before = proc.cpu_times()
        time.sleep(1.0)
        after = proc.cpu_times()
        assert (after.user - before.user) + (after.system - before.system) < 0.1
        assert "client disconnected" in w.logs()


def test_corrupt_or_truncated_model_files_fail_to_load_and_others_keep_serving(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits", "corrupt": "digits",
                                         "truncated": "digits"})
    (repo / "corrupt" / "model.onnx").write_bytes(b"\x08\x07garbage" * 500)
    data = (repo / "truncated" / "model.onnx").read_bytes()
    (repo / "truncated" / "model.onnx").write_bytes(data[: len(data) // 3])
    with running_worker(repo, tmp_path / "w.log", preload=["digits"]) as w, \
            httpx.Client(base_url=w.url, timeout=30) as c:
        for bad in ("corrupt", "truncated"):
            r = c.post(f"/api/models/{bad}/load")
            assert r.status_code == 422 and r.json()["error"] == "ERR_MODEL_LOAD_FAILED"
            assert "could not load" in r.json()["message"]
            assert c.post("/api/inference/digits", json={"inputData": [0] * 64}
                          ).status_code == 200
        states = {m["id"]: m for m in c.get("/api/models").json()["models"]}
        assert states["corrupt"]["state"] == "failed" and states["corrupt"]["error"]
        assert c.get("/api/capacity").json()["availableModels"] == ["digits"]
        # repaired on disk: the next load works
        shutil.copy(EXAMPLES / "digits" / "model.onnx", repo / "corrupt" / "model.onnx")
        assert c.post("/api/models/corrupt/load").status_code == 200


def test_load_failing_half_way_leaves_no_half_loaded_model(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits"})
    add_broken_model(repo)  # loads, but its warm-up run fails (Reshape of 1 element)
    spec = json.loads((repo / "broken" / "model.json").read_text())
    (repo / "broken" / "model.json").write_text(json.dumps({**spec, "warmup": True}))
    with running_worker(repo, tmp_path / "w.log", preload=["digits"]) as w, \
            httpx.Client(base_url=w.url, timeout=30) as c:
        r = c.post("/api/models/broken/load")
        assert r.status_code == 422, r.text
        model = c.get("/api/models/broken").json()
        assert model["state"] == "failed" and model["memoryBytes"] is None
        assert "inputs" not in model or model["inputs"] is None
        assert c.get("/api/capacity").json()["availableModels"] == ["digits"]
        assert 'wrk_model_loaded{model="broken"} 0.0' in c.get("/metrics").text
        r = c.post("/api/inference/broken", json={"inputData": [1, 2, 3, 4]})
        assert r.status_code == 409


async def test_rack_sigterm_during_load_answers_every_admitted_call(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"slow": "slow"})
    payload = {"modelId": "slow", **slow_body(slow_iterations(0.4))}
    with local_testnet(3) as bootstrap:
        rack = Rack(tmp_path, "rack-term", bootstrap, repo, preload=["slow"],
                    max_concurrent_inferences=2, max_queued_inferences=10)
        try:
            rack.wait_ready()
            key = rack.key
            async with RpcClient(bootstrap) as client:
                calls = [asyncio.create_task(client.request(key, "runInference", payload))
                         for _ in range(8)]
                await asyncio.sleep(0.3)
                rack.proc.send_signal(signal.SIGTERM)
                outcomes = await asyncio.wait_for(asyncio.gather(*calls,
                                                                 return_exceptions=True), 30)
            with contextlib.suppress(subprocess.TimeoutExpired):  # it exits by itself
                rack.proc.wait(60)
        finally:
            code = rack.stop()
        assert code == 0, rack.logs()
        assert [o["success"] if isinstance(o, dict) else repr(o) for o in outcomes] == \
            [True] * 8
        [after] = orchestrate(bootstrap, None, [{"lookup": "ai-inference:slow"}])
        assert key not in after["result"]


def test_http_binds_loopback_by_default_and_says_so(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits"})
    with running_worker(repo, tmp_path / "w.log", host=None) as w:
        start = next(line for line in w.log_lines() if line.get("msg") == "starting HTTP worker")
        assert start["host"] == "127.0.0.1"
        sockets = [c for c in psutil.Process(w.proc.pid).net_connections(kind="inet")
                   if c.status == psutil.CONN_LISTEN]
        assert sockets and all(c.laddr.ip == "127.0.0.1" for c in sockets)
