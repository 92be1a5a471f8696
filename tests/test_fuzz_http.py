"""Schema-driven fuzzing of the HTTP API from its own /openapi.json (schemathesis).

Every generated request must get a documented answer: a 2xx, or an error body
with an ERR_ code; no 5xx except the documented runtime ones, never
ERR_INTERNAL. Afterwards the worker must still answer correctly. It runs on a
worker of its own, since the fuzzer also loads and unloads models.
"""

from __future__ import annotations

import gzip
import json
import random
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from wrk_ai_inference.errors import HTTP_STATUS, V2_STATUS
from wrk_ai_inference.http.responses import protocol_of

from .helpers import DIGIT_ZERO, Worker, make_repo, running_worker

# documented 5xx: a runtime failure, starting/draining, a deadline, and (v2 only) a cold
# model or full queue, which the Open Inference Protocol answers with 503
DOCUMENTED_5XX = {"ERR_INFERENCE_FAILED", "ERR_NOT_READY", "ERR_INFERENCE_TIMEOUT",
                  "ERR_MODEL_NOT_AVAILABLE", "ERR_CAPACITY_EXCEEDED"}
#: streams with no end (a request-response fuzzer would wait forever): tested on their own
ENDLESS = {"/api/live"}  # test_console.py
seen: Counter[int] = Counter()
per_op: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("fuzz")
    repo = make_repo(root / "repo", {"digits": "digits", "digits2": "digits"})
    with running_worker(repo, root / "w.log", preload=["digits"], auto_load=True,
                        max_request_bytes=1_000_000) as w:
        yield w


def _check(case: schemathesis.Case) -> None:
    response = case.call(timeout=30)
    seen[response.status_code] += 1
    per_op[f"{case.method} {case.path}"] += 1
    if response.status_code < 400:
        return
    protocol = protocol_of(case.path)  # each path answers in its protocol's error shape
    if protocol == "v2":
        if not response.content:  # readiness answers carry no body (200 / 400)
            assert case.path.endswith("/ready"), case.path
            return
        body = response.json()  # v2: {"error": "message", "code": "ERR_CODE"}
        code = body["code"]
        assert code in V2_STATUS and V2_STATUS[code] == response.status_code, body
        assert isinstance(body["error"], str) and body["error"]
    elif protocol == "ollama":  # Ollama: {"error": "message", "code"}
        body = response.json()
        code = body["code"]
        assert code in HTTP_STATUS and HTTP_STATUS[code] == response.status_code, body
        assert isinstance(body["error"], str) and body["error"]
    elif protocol == "anthropic":  # Anthropic: {"type": "error", "error", "code"}
        body = response.json()
        code = body["code"]
        assert body["type"] == "error" and code in HTTP_STATUS, body
        assert HTTP_STATUS[code] == response.status_code, body
        assert isinstance(body["error"]["message"], str) and body["error"]["type"]
    elif protocol == "openai":  # OpenAI: {"error": {"message", "type", "code"}}
        error = response.json()["error"]
        code = error["code"]
        assert code in HTTP_STATUS and HTTP_STATUS[code] == response.status_code, error
        assert isinstance(error["message"], str) and error["message"] and error["type"]
    else:
        body = response.json()
        code = body["error"]
        assert body["success"] is False and code in HTTP_STATUS, body
        assert HTTP_STATUS[code] == response.status_code, body
        assert isinstance(body["message"], str) and body["message"]
    if response.status_code >= 500:
        assert code in DOCUMENTED_5XX, (case.method, case.path, code)


@pytest.mark.parametrize("model_id", [None, "digits"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_api(fuzz_worker: Worker, mode: GenerationMode, model_id: str | None) -> None:
    # Driven through hypothesis strategies: schemathesis' pytest plugin does not run on
    # pytest 9. Derandomized, so a failure reproduces; bounded by max_examples.
    api = schemathesis.openapi.from_url(fuzz_worker.url + "/openapi.json")
    for result in api.get_all_operations():
        operation = result.ok()
        if model_id is not None and "{modelId}" not in operation.path:
            continue
        if operation.path in ENDLESS:
            continue
        pinned = {"modelId": model_id} if model_id else None

        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=pinned))
        @settings(max_examples=150, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            _check(case)

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing invalid to send, e.g. GET /health


_EXPECTED = {  # what each kind of compressed or oversized body must get, and nothing else
    "valid": {200}, "bomb": {413}, "cut": {400}, "garbage": {400}, "unknown-encoding": {400},
    "oversized": {413}, "oversized-chunked": {413}, "mislabelled": {400},
}


def _compressed_case(rng: random.Random, encoding: str) -> tuple[str, bytes, dict[str, str]]:
    request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                           "data": [float(rng.randrange(17)) for _ in range(64)]}]}
    plain = json.dumps(request).encode()

    def pack(data: bytes) -> bytes:
        return gzip.compress(data, rng.randrange(1, 10)) if encoding == "gzip" else \
            zlib.compress(data, rng.randrange(1, 10))

    kind = rng.choice(["valid", "bomb", "cut", "garbage", "unknown-encoding", "mislabelled"])
    headers = {"content-encoding": encoding}
    if kind == "valid":
        body = pack(plain)
    elif kind == "bomb":  # inflates far past maxRequestBytes (1 MB here)
        body = pack(b'{"inputs": [' + b" " * rng.choice([2 << 20, 16 << 20, 256 << 20]) + b"]}")
    elif kind == "cut":
        packed = pack(plain)
        body = packed[: rng.randrange(1, len(packed) - 1)]
    elif kind == "garbage":
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    elif kind == "mislabelled":  # plain JSON claiming to be compressed
        body = plain
    else:
        body, headers = pack(plain), {"content-encoding": rng.choice(["br", "zstd", "lzma"])}
    return kind, body, headers


def _urllib_status(url: str, body: Any, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        json.loads(exc.read())  # an error body in JSON, never a reset connection
        return int(exc.code)


def test_fuzz_compressed_and_oversized_bodies(fuzz_worker: Worker) -> None:
    """gzip and deflate bodies (valid, bombs, cut, garbage), and bodies over the limit sent
    by a client that writes the whole body before reading (urllib), chunked or not."""
    rng = random.Random(20261201)
    counts: Counter[tuple[str, int]] = Counter()
    for _ in range(60):
        encoding = rng.choice(["gzip", "deflate"])
        kind, body, headers = _compressed_case(rng, encoding)
        status = _urllib_status(fuzz_worker.url + "/v2/models/digits/infer", body, headers)
        counts[(kind, status)] += 1
        assert status in _EXPECTED[kind], (kind, encoding, status)
    big = b'{"inputData": [' + b"1," * 600_000 + b"1]}"  # 1.2 MB, over maxRequestBytes
    paths = ["/api/inference/digits", "/v2/models/digits/infer", "/api/models/digits/load",
             "/api/capacity"]
    for _ in range(12):
        path = rng.choice(paths)
        chunked = rng.random() < 0.5
        body: Any = iter([big[i:i + 65536] for i in range(0, len(big), 65536)]) \
            if chunked else big[: rng.randrange(1_000_001, len(big))]
        kind = "oversized-chunked" if chunked else "oversized"
        status = _urllib_status(fuzz_worker.url + path, body, {})
        counts[(kind, status)] += 1
        # routes that take no body never read a chunked one: they answer as without it,
        # and the lingering close drops the rest; a declared length over the cap is a 413
        takes_no_body = path in ("/api/models/digits/load", "/api/capacity")
        assert status in _EXPECTED[kind] or (path == "/api/capacity" and status == 405) or \
            (takes_no_body and chunked and status == 200), (kind, path, status)
    print(f"fuzz: {sum(counts.values())} compressed/oversized HTTP cases, "  # noqa: T201
          f"outcomes {dict(sorted(counts.items()))}")
    assert {kind for kind, _ in counts} >= {"valid", "bomb", "cut", "garbage", "oversized"}


def test_fuzz_left_the_worker_correct(fuzz_worker: Worker) -> None:
    total = sum(seen.values())
    assert total >= 1000, f"only {total} fuzz cases ran"
    assert "ERR_INTERNAL" not in fuzz_worker.logs()
    with httpx.Client(base_url=fuzz_worker.url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        assert c.post("/api/models/digits/load").status_code == 200
        r = c.post("/api/inference/digits", json={"inputData": DIGIT_ZERO})
        assert r.status_code == 200 and r.json()["result"]["predictions"][0][0]["label"] == "0"
        assert c.get("/api/capacity").json()["currentLoad"] == 0
    pytest.fuzz_counts = dict(seen)  # type: ignore[attr-defined]
    print(f"fuzz: {total} HTTP cases, status counts {dict(sorted(seen.items()))}, {dict(per_op)}")  # noqa: T201
