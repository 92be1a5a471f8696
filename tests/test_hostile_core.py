"""The core under hostile or unlucky timing: preprocessing, error text, the cache bound,
DHT topics and the sidecar's replies, in-process with real models."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from wrk_ai_inference.config import Settings
from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.models.manager import ModelManager, ModelState
from wrk_ai_inference.p2p.netconfig import load_net_config
from wrk_ai_inference.p2p.sidecar import NODE_DIR, Sidecar
from wrk_ai_inference.rpc.server import RackWorker, internal_reply, model_topic

from .helpers import DIGIT_ZERO, add_broken_model, make_repo
from .rack_helpers import local_testnet
from .test_batcher import started_worker


def _png(digit_pixels: list[int]) -> str:
    from PIL import Image

    image = Image.new("L", (8, 8))
    image.putdata([p * 16 for p in digit_pixels])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def test_preprocessing_runs_off_the_loop_after_admission(tmp_path: Path) -> None:
    worker = await started_worker(make_repo(tmp_path, {"digits-cnn": "digits-cnn",
                                                       "slow": "slow"}),
                                  preload=["digits-cnn", "slow"], maxConcurrentInferences=1,
                                  maxQueuedInferences=0)
    try:
        entry = worker.models.entry("digits-cnn")
        pipeline = entry.pipeline
        threads: list[str] = []
        real = pipeline.inputs

        def spy(*args: Any) -> Any:
            threads.append(threading.current_thread().name)
            return real(*args)

        pipeline.inputs = spy
        image = _png(DIGIT_ZERO)
        result = await worker.run_inference("digits-cnn", image)
        assert result["result"]["predictions"][0][0]["label"] == "0"
        assert threads and threads[-1] != threading.main_thread().name, threads
        # with the one slot taken, an image is refused before anything is decoded
        from .helpers import slow_body, slow_iterations

        slow = asyncio.create_task(worker.run_inference(
            "slow", slow_body(slow_iterations(1.0))["inputData"]))
        await asyncio.sleep(0.1)
        threads.clear()
        with pytest.raises(InferenceError) as refused:
            await worker.run_inference("digits-cnn", image)
        assert refused.value.code == "ERR_CAPACITY_EXCEEDED" and threads == []
        await slow

        # preprocessing counts against the deadline; its slot stays taken until it ends
        def stuck(*args: Any) -> Any:
            time.sleep(1.0)
            return real(*args)

        pipeline.inputs = stuck
        started = time.perf_counter()
        with pytest.raises(InferenceError) as late:
            await worker.run_inference("digits-cnn", image, {"timeout": 200})
        assert late.value.code == "ERR_INFERENCE_TIMEOUT"
        assert "preprocessing" in late.value.message
        assert time.perf_counter() - started < 0.8
        assert worker.capacity.running == 1 and entry.in_flight == 1
        for _ in range(300):
            if worker.capacity.running == 0:
                break
            await asyncio.sleep(0.01)
        assert worker.capacity.running == 0 and entry.in_flight == 0
        pipeline.inputs = real
        result = await worker.run_inference("digits-cnn", image)
        assert result["result"]["predictions"][0][0]["label"] == "0"
    finally:
        await worker.stop()


async def test_runtime_and_unexpected_errors_keep_their_text_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = make_repo(tmp_path, {"digits": "digits"})
    add_broken_model(repo)
    worker = await started_worker(repo, preload=["digits", "broken"])
    try:
        with pytest.raises(InferenceError) as failed:  # Reshape of 3 values to [2, 2]
            await worker.run_inference("broken", [1.0, 2.0, 3.0])
        assert failed.value.code == "ERR_INFERENCE_FAILED"
        text = failed.value.message
        assert "runtime failed on this input" in text and "the worker's log" in text
        assert "Reshape" not in text and "ONNXRuntimeError" not in text
        assert any("Reshape" in str(getattr(r, "detail", "")) for r in caplog.records)

        session = worker.models.entry("digits").session
        assert session is not None

        def empty(*args: Any) -> Any:
            raise RuntimeError("")  # a runtime that raises with no message at all

        session.run = empty  # type: ignore[method-assign]
        session.run_seconds = None  # not inline: through the batcher's thread path too
        with pytest.raises(InferenceError) as blank:
            await worker.run_inference("digits", [DIGIT_ZERO])
        assert blank.value.code == "ERR_INFERENCE_FAILED"

        def secret(*args: Any) -> Any:
            raise KeyError("/secret/path/and/internals")

        task = worker.models.entry("digits").pipeline
        assert task is not None
        task.outputs = secret  # type: ignore[method-assign]
        session.run = type(session).run.__get__(session)  # type: ignore[method-assign]
        with pytest.raises(InferenceError) as unexpected:
            await worker.run_inference("digits", [DIGIT_ZERO])
        assert unexpected.value.code == "ERR_INFERENCE_FAILED"
        assert "secret" not in unexpected.value.message
        assert "unexpectedly" in unexpected.value.message
    finally:
        await worker.stop()


async def test_concurrent_loads_never_exceed_the_cache_size(tmp_path: Path) -> None:
    ids = [f"m{i}" for i in range(5)]
    repo = make_repo(tmp_path, {i: "digits" for i in ids})
    m = ModelManager(Settings(modelRepository=str(repo), modelCacheSize=3))  # type: ignore[call-arg]
    seen: list[int] = []
    m.add_listener(lambda _id, state: seen.append(len(m.loaded_ids()))
                   if state is ModelState.LOADED else None)
    results = await asyncio.gather(*(m.load(i) for i in ids), return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert len(seen) == 5 and max(seen) <= 3, seen
    assert len(m.loaded_ids()) <= 3


async def test_a_cache_full_of_busy_models_refuses_new_loads(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a": "digits", "b": "digits", "c": "digits"})
    m = ModelManager(Settings(modelRepository=str(repo), modelCacheSize=2))  # type: ignore[call-arg]
    await asyncio.gather(m.load("a"), m.load("b"))
    pinned = [await m.acquire("a"), await m.acquire("b")]
    with pytest.raises(InferenceError) as full:
        await m.load("c")
    assert full.value.code == "ERR_CAPACITY_EXCEEDED"
    for entry in pinned:
        m.release(entry)
    await m.load("c")
    assert len(m.loaded_ids()) == 2


class _RecordingSidecar:
    """Stands in for the Node sidecar in-process: records what is announced."""

    def __init__(self) -> None:
        self.announced: set[str] = set()
        self.info = {"clientKey": "11" * 32}
        self.pid = None
        self.restarts = 0

    async def command(self, name: str, fields: dict[str, Any] | None = None,
                      body: bytes = b"", timeout: float = 30) -> tuple[dict[str, Any], bytes]:
        await asyncio.sleep(0)  # a real sidecar answers later: updates may interleave
        assert fields is not None
        if name == "dht.announce":
            self.announced |= set(fields["topics"])
        elif name == "dht.unannounce":
            self.announced -= set(fields["topics"])
        return {"ok": True}, b""


async def test_a_withdrawn_topic_never_comes_back(tmp_path: Path) -> None:
    ids = [f"m{i}" for i in range(4)]
    repo = make_repo(tmp_path / "repo", {i: "digits" for i in ids})
    settings = Settings(modelRepository=str(repo), modelCacheSize=2)  # type: ignore[call-arg]
    net = load_net_config(None, {"bootstrap": ["127.0.0.1:1"],
                                 "storeDir": str(tmp_path / "store"),
                                 "statusDir": str(tmp_path / "status")})
    rack = RackWorker(settings, net, "race", "test")
    bridge = _RecordingSidecar()
    rack.sidecar = bridge  # type: ignore[assignment]
    rack.worker.models.add_listener(rack._on_model_change)
    await rack.worker.start()
    await rack.worker.wait_ready()
    rack.state = "ready"
    manager = rack.worker.models

    async def settled() -> set[str]:
        while rack._topic_task is not None and not rack._topic_task.done():
            await rack._topic_task
        await asyncio.sleep(0.01)
        return bridge.announced - {"ai-inference"}

    try:
        for round_ in range(3):  # concurrent loads with evictions between them
            await asyncio.gather(*(manager.load(i) for i in ids[round_:] + ids[:round_]))
            assert await settled() == {model_topic(m) for m in manager.serving_ids()}
        # an eviction and a load reported in the same tick
        a, b = manager.serving_ids()
        manager._drop(manager.entry(a), reason="test")
        rack._on_model_change(b, ModelState.LOADED)
        assert await settled() == {model_topic(b)}
    finally:
        await rack.worker.stop()
    status = json.loads((tmp_path / "status" / "wrk-ai-inference.race.json").read_text())
    assert status["state"] == "ready"


def test_the_frame_reader_copies_each_frame_once() -> None:
    node = shutil.which("node")
    assert node is not None
    script = """
const { FrameReader } = require(process.argv[1])
const body = Buffer.alloc(16 << 20, 7)
const head = Buffer.from(JSON.stringify({ t: 'call', id: 1 }))
const prefix = Buffer.alloc(8)
prefix.writeUInt32BE(4 + head.length + body.length, 0)
prefix.writeUInt32BE(head.length, 4)
const frame = Buffer.concat([prefix, head, body])
const stream = Buffer.concat([frame, frame, frame])
const got = []
const reader = new FrameReader((header, payload) => got.push([header.id, payload.length]))
for (let i = 0; i < stream.length; i += 65536) reader.push(stream.subarray(i, i + 65536))
console.log(JSON.stringify({ frames: got, copied: reader.copied, total: stream.length }))
"""
    out = subprocess.run([node, "-e", script, str(NODE_DIR / "frames.js")],
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["frames"] == [[1, 16 << 20]] * 3
    assert result["copied"] <= 2 * result["total"], result  # linear, not one copy per chunk


async def test_every_bridge_call_gets_one_reply_even_when_the_handler_raises(
        tmp_path: Path) -> None:
    from wrk_ai_inference.rpc.client import RpcClient

    async def handler(method: str, body: bytes, peer: str) -> bytes:
        if method == "boom":
            raise RuntimeError("handler bug with /internal/detail")
        return body

    with local_testnet(3) as bootstrap:
        bridge = Sidecar({"dhtSeed": "cd" * 32, "bootstrap": bootstrap, "host": "127.0.0.1",
                          "keepAlive": 2000, "storeDir": None,
                          "rpc": {"seed": "ab" * 32, "poolLinger": 300_000,
                                  "connectionTimeout": 7000, "announceInterval": 300_000}})
        bridge.on_call, bridge.on_call_error = handler, internal_reply
        await bridge.start()
        info, _ = await bridge.command("rpc.serve", {"allow": None, "methods": ["boom", "echo"]})
        try:
            async with RpcClient(bootstrap) as client:
                started = time.perf_counter()
                raw = await client.request_raw(info["publicKey"], "boom", b"{}", timeout_ms=20_000)
                assert time.perf_counter() - started < 5
                reply = orjson.loads(raw)
                assert reply.startswith("[HRPC_ERR]=ERR_INTERNAL") and "/internal" not in reply
                assert await client.request_raw(info["publicKey"], "echo", b"[1]") == b"[1]"
        finally:
            await bridge.close()

