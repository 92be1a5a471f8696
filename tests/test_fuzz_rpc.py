"""Bounded fuzzing of the RPC methods: random and malformed payloads through the real
bridge. Every reply must be JSON: a result, or ``[HRPC_ERR]=<documented code>``; never
ERR_INTERNAL, never silence; and the worker answers correctly afterwards."""

from __future__ import annotations

import asyncio
import json
import random
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from wrk_ai_inference import framing
from wrk_ai_inference.errors import HTTP_STATUS
from wrk_ai_inference.p2p.sidecar import Sidecar
from wrk_ai_inference.rpc.client import RpcClient
from wrk_ai_inference.rpc.methods import METHODS

from .helpers import DIGIT_ZERO, make_repo
from .rack_helpers import Rack, local_testnet, running_rack

CASES = 1200
#: payload sizes past the rack's maxRequestBytes (2 MB)
OVERSIZED = (2_000_001, 3_000_000, 8_000_000)
METHOD_NAMES = [*METHODS, "ping"]


@pytest.fixture(scope="module")
def fuzz_rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rack, list[str]]]:
    root = tmp_path_factory.mktemp("rpcfuzz")
    repo = make_repo(root / "repo", {"digits": "digits", "digits2": "digits"})
    with local_testnet(3) as bootstrap, running_rack(root, "fuzz", bootstrap, repo,
                                                     preload=["digits"], auto_load=True,
                                                     max_request_bytes=2_000_000) as rack:
        yield rack, bootstrap


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**64), 1e308, -1e-308, 3.5])
    if kind == 3:
        return rng.choice(["", "digits", "../etc/passwd", "%2e%2e", "a\\x00b", "x" * 5000,
                           "digits2", "ünïcödé", "nope"])
    if kind == 4:
        return rng.random()
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    keys = ["modelId", "inputData", "options", "timeout", "topK", "outputs", "x"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _payload(rng: random.Random) -> bytes:
    choice = rng.randrange(10)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))  # not JSON
    if choice == 1:
        return rng.choice([b"NaN", b"Infinity", b'{"modelId": NaN}', b"[" * 3000 + b"]" * 3000,
                           b'{"modelId": "digits", "inputData": [1e999]}', b"", b"{",
                           b'"\\ud800"'])
    if choice == 2:  # plausible inference with broken pieces
        data: Any = rng.choice([[0] * 64, [[0] * 64] * 2, [0] * 63, [[1] * 64, [1] * 63],
                                ["a"] * 64, {"input": [0] * 64}, {"pixels": [0]}, None])
        return _dumps({"modelId": rng.choice(["digits", "digits2", "../x", "", "nope",
                                                    "d" * 300]),
                             "inputData": data,
                             "options": _value(rng) if rng.random() < 0.3 else None})
    return _dumps(_value(rng))


def _dumps(value: Any) -> bytes:
    # the standard library writes integers past 64 bits too, which the worker must refuse
    return json.dumps(value).encode()


async def _fuzz(key: str, bootstrap: list[str]) -> tuple[Counter[str], list[str]]:
    rng = random.Random(20261127)
    seen: Counter[str] = Counter()
    problems: list[str] = []
    async with RpcClient(bootstrap, timeout_ms=20_000) as client:
        sem = asyncio.Semaphore(16)

        async def one(method: str, body: bytes) -> None:
            async with sem:
                reply = await client.request_raw(key, method, body)
            try:
                value = orjson.loads(reply)
            except orjson.JSONDecodeError:
                problems.append(f"{method}: reply is not JSON: {reply[:80]!r}")
                return
            if isinstance(value, str) and value.startswith("[HRPC_ERR]="):
                code = value[len("[HRPC_ERR]="):].split(":")[0]
                seen[code] += 1
                if code not in HTTP_STATUS or code == "ERR_INTERNAL":
                    problems.append(f"{method} {body[:60]!r}: undocumented {value[:120]}")
            else:
                seen["ok"] += 1

        cases = [(rng.choice(METHOD_NAMES), _payload(rng)) for _ in range(CASES)]
        cases.append(("runInference", b'{"modelId": "digits", "inputData": [' +
                      b"1," * 1_200_000 + b"1]}"))  # over maxRequestBytes
        for size in OVERSIZED:  # over maxRequestBytes, JSON or not, on any method
            cases.append((rng.choice(METHOD_NAMES), rng.choice([b"[", b"{", b" "]) * size))
        await asyncio.gather(*(one(m, b) for m, b in cases))
    return seen, problems


async def test_rpc_fuzz_finds_nothing_undocumented(fuzz_rack: tuple[Rack, list[str]]) -> None:
    rack, bootstrap = fuzz_rack
    seen, problems = await _fuzz(rack.key, bootstrap)
    total = sum(seen.values())
    print(f"fuzz: {total} RPC cases, outcomes {dict(seen.most_common())}")  # noqa: T201
    assert total == CASES + 1 + len(OVERSIZED)
    assert not problems, problems[:5]
    assert seen["ERR_PAYLOAD_TOO_LARGE"] >= 1 + len(OVERSIZED)
    assert seen["ERR_FACS_NET_DATA_FORMAT"] >= 50
    assert "ERR_INTERNAL" not in rack.logs()
    async with RpcClient(bootstrap) as client:  # still correct afterwards
        result = await client.request(rack.key, "runInference",
                                      {"modelId": "digits", "inputData": DIGIT_ZERO})
        assert result["result"]["predictions"][0][0]["label"] == "0"
        health = await client.request(rack.key, "getHealth")
        assert health["status"] == "healthy" and health["capacity"]["currentLoad"] == 0


class _FakeProcess:
    """A bridge process whose stdout carries the bytes a test gives it."""

    def __init__(self, data: bytes) -> None:
        self.stdout = asyncio.StreamReader()
        self.stdout.feed_data(data)
        self.stdout.feed_eof()
        self.killed = False

    def kill(self) -> None:
        self.killed = True


@pytest.mark.parametrize("frame", [
    struct.pack(">I", 2) + b"xx",  # total shorter than the header length field
    struct.pack(">I", (256 << 20) + 1),  # past the frame limit
    struct.pack(">II", 12, 8) + b"not json",  # header that is not JSON
    struct.pack(">II", 8, 400) + b"{}{}",  # header length past the frame
    struct.pack(">II", 6, 2) + b"[]",  # a header that is not an object
])
async def test_malformed_frames_from_the_bridge_restart_it(frame: bytes) -> None:
    """Bad frames on the stdio channel are never read as calls: the bridge is killed (the
    supervisor starts a fresh one), and a good frame before them was still delivered."""
    calls: list[dict[str, Any]] = []
    bridge = Sidecar({})
    bridge._dispatch = lambda header, body, generation: calls.append(header)  # type: ignore[method-assign]
    good = framing.encode({"t": "log", "msg": "fine"})
    proc = _FakeProcess(good + frame)
    await bridge._read(proc, 1)  # type: ignore[arg-type]
    assert calls == [{"t": "log", "msg": "fine"}]
    assert proc.killed
