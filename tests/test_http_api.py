"""The seed API over real HTTP on 127.0.0.1, against a real worker process."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from httpx import Client

from wrk_ai_inference.examples import digits_split

from .helpers import EXAMPLES, ROOT, Worker, free_port

ERROR_KEYS = {"success", "error", "message", "details"}


@pytest.fixture
def client(worker: Worker) -> Client:
    with Client(base_url=worker.url, timeout=30) as c:
        yield c


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["success"] is False and body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_digits_accuracy_over_http_equals_in_process(client: Client) -> None:
    _, x_test, _, y_test = digits_split()
    session = ort.InferenceSession(str(EXAMPLES / "digits" / "model.onnx"))
    local = session.run(None, {"input": x_test})[0].argmax(axis=1)
    local_accuracy = float(np.mean(local == y_test))

    predicted = []
    for row in x_test:  # one request per held-out image, as a client would send them
        r = client.post("/api/inference/digits", json={"inputData": row.tolist()})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True and body["modelId"] == "digits"
        assert {"inferenceId", "result", "processingTime", "timestamp"} <= set(body)
        top = body["result"]["predictions"][0][0]
        assert body["result"]["confidence"][0] == pytest.approx(top["score"])
        predicted.append(int(top["label"]))
    http_accuracy = float(np.mean(np.array(predicted) == y_test))
    assert len(predicted) == len(y_test) == 450
    assert abs(http_accuracy - local_accuracy) <= 0.001
    assert http_accuracy > 0.95


def test_batched_request_and_outputs(client: Client) -> None:
    _, x_test, _, _ = digits_split()
    r = client.post("/api/inference/digits",
                    json={"inputData": {"input": x_test[:5].tolist()}, "options": {"topK": 2}})
    result = r.json()["result"]
    assert len(result["predictions"]) == 5 and all(len(p) == 2 for p in result["predictions"])
    assert np.asarray(result["outputs"]["logits"]).shape == (5, 10)
    assert np.allclose(np.asarray(result["probabilities"]).sum(axis=1), 1.0, atol=1e-5)


def test_tensor_model_matches_in_process(client: Client) -> None:
    x = np.random.default_rng(0).standard_normal((2, 1024)).astype(np.float32)
    r = client.post("/api/inference/mlp", json={"inputData": x.tolist()})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["result"]["outputs"]["output"], dtype=np.float32)
    expected = ort.InferenceSession(str(EXAMPLES / "mlp" / "model.onnx")).run(None, {"input": x})[0]
    assert got.shape == (2, 1000)
    assert np.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(("body", "why"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "inputData"),
    (b'{"input": [1]}', "inputData"),
    (b'{"inputData": [0], "options": {"timeout": -5}}', "options.timeout"),
    (b'{"inputData": [0], "options": "fast"}', "options"),
    (b'{"inputData": [0], "options": {"topK": 0}}', "topK"),
])
def test_invalid_request(client: Client, body: bytes, why: str) -> None:
    r = client.post("/api/inference/digits", content=body)
    assert why in assert_error(r, 400, "ERR_INVALID_REQUEST")["message"]


@pytest.mark.parametrize(("data", "why"), [
    ([1, 2, 3], "shape [-1, 64]"),
    ({"pixels": [0] * 64}, "missing ['input']"),
    ([[0] * 64, [0] * 63], "ragged"),
    (["a"] * 64, "only numbers"),
    ([None] * 64, "only numbers"),
    ("abc", "inputData must be an object"),
    ([1e39] * 64, "too large for FP32"),
    ([[[0] * 64]], "shape"),
])
def test_invalid_input(client: Client, data: object, why: str) -> None:
    r = client.post("/api/inference/digits", json={"inputData": data})
    body = assert_error(r, 400, "ERR_INVALID_INPUT")
    assert why in body["message"], body["message"]


def test_integer_input_refuses_fractions(client: Client) -> None:
    r = client.post("/api/models/slow/load")
    assert r.status_code == 200
    r = client.post("/api/inference/slow",
                    json={"inputData": {"x": [[0.5] * 256], "iterations": [1.5]}})
    assert "whole numbers" in assert_error(r, 400, "ERR_INVALID_INPUT")["message"]
    client.post("/api/models/slow/unload")


@pytest.mark.parametrize("model_id", ["nope", "..%2F..%2Fetc", "a" * 200, "%2e%2e", "x%00y",
                                      ".hidden"])
def test_model_not_found(client: Client, model_id: str) -> None:
    # an id that decodes to a path with '/' matches no route at all: still a 404
    code = "ERR_NOT_FOUND" if "%2F" in model_id else "ERR_MODEL_NOT_FOUND"
    r = client.post(f"/api/inference/{model_id}", json={"inputData": [0]})
    assert_error(r, 404, code)
    assert_error(client.post(f"/api/models/{model_id}/load"), 404, code)
    assert_error(client.get(f"/api/models/{model_id}"), 404, code)


def test_cold_model_is_not_available(client: Client) -> None:
    body = assert_error(client.post("/api/inference/slow", json={"inputData": {}}), 409,
                        "ERR_MODEL_NOT_AVAILABLE")
    assert "/api/models/slow/load" in body["message"]


def test_runtime_failure_is_500_and_worker_stays_healthy(client: Client) -> None:
    r = client.post("/api/inference/broken", json={"inputData": [1, 2, 3]})
    assert "runtime failed" in assert_error(r, 500, "ERR_INFERENCE_FAILED")["message"]
    ok = client.post("/api/inference/broken", json={"inputData": [1, 2, 3, 4]})
    assert ok.status_code == 200
    assert ok.json()["result"]["outputs"]["y"] == [[1, 2], [3, 4]]
    assert client.get("/health").status_code == 200


def test_load_is_idempotent_and_unload(client: Client) -> None:
    first = client.post("/api/models/slow/load")
    assert first.status_code == 200 and first.json()["message"] == "Model loaded"
    model = first.json()["model"]
    assert model["state"] == "loaded"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 256]},
                               {"name": "iterations", "datatype": "INT64", "shape": [1]}]
    again = client.post("/api/models/slow/load").json()
    assert again["success"] is True and again["message"] == "Model already loaded"
    cap = client.get("/api/capacity", params={"modelId": "slow"}).json()
    assert cap["modelLoaded"] is True and "slow" in cap["availableModels"]
    assert "slow" not in cap["cachedModels"]
    gone = client.post("/api/models/slow/unload").json()
    assert gone == {"success": True, "message": "Model unloaded"}
    later = client.get("/api/capacity", params={"modelId": "slow"}).json()
    assert later["modelLoaded"] is False and later["modelAvailable"] is False
    # on disk, not loaded: what a router tries after the warm workers
    assert "slow" in later["cachedModels"] and later["seq"] > cap["seq"]


def test_capacity_health_models_and_stats(client: Client) -> None:
    cap = client.get("/api/capacity").json()
    assert {"maxConcurrent", "currentLoad", "queued", "maxQueued", "available",
            "availableModels"} <= set(cap)
    assert cap["maxConcurrent"] == 10 and cap["available"] is True
    health = client.get("/health").json()
    assert health["status"] == "healthy" and health["service"] == "ai-inference"
    assert health["uptime"] > 0 and health["capacity"]["maxConcurrent"] == 10
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert set(models) == {"digits", "mlp", "slow", "broken"}
    assert models["digits"]["state"] == "loaded" and models["digits"]["task"] == "classification"
    assert models["mlp"]["memoryBytes"] >= models["mlp"]["sizeBytes"] > 90_000_000
    one = client.get("/api/models/digits").json()
    assert one["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    client.post("/api/inference/digits", json={"inputData": [0] * 64})
    stats = client.get("/api/stats").json()
    digits = stats["byModel"]["digits"]
    assert digits["successful"] >= 1 and digits["latencyMs"]["p50"] > 0
    assert {"p50", "p95", "p99"} <= set(stats["latencyMs"])
    assert 0 <= stats["successRate"] <= 1


def test_metrics_are_prometheus_text(client: Client) -> None:
    client.post("/api/inference/digits", json={"inputData": [0] * 64})
    client.post("/api/inference/digits", json={"inputData": [1]})
    text = client.get("/metrics").text
    assert 'wrk_inference_requests_total{model="digits",outcome="success"}' in text
    assert 'wrk_inference_requests_total{model="digits",outcome="ERR_INVALID_INPUT"}' in text
    assert "wrk_inference_request_duration_seconds_bucket" in text
    assert 'wrk_model_loaded{model="digits"} 1.0' in text
    assert "wrk_inference_queued 0.0" in text


def test_openapi_and_unknown_routes(client: Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/inference/{modelId}" in spec["paths"]
    assert "requestBody" in spec["paths"]["/api/inference/{modelId}"]["post"]
    assert_error(client.get("/api/nothing"), 404, "ERR_NOT_FOUND")
    assert_error(client.get("/api/inference/digits"), 405, "ERR_METHOD_NOT_ALLOWED")


def test_request_id_is_echoed(client: Client) -> None:
    r = client.get("/api/capacity", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(client.get("/api/capacity").headers["x-request-id"]) == 32


def test_docs_need_nothing_from_the_internet(worker: Worker) -> None:
    """/docs names only assets the worker serves itself (air-gapped hosts get a page)."""
    import re

    page = httpx.get(worker.url + "/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"|url: *[\'"]([^\'"]+)', page.text)
    found = [u for pair in urls for u in pair if u]
    assert found and all(u.startswith("/") for u in found), found
    for url in found:
        asset = httpx.get(worker.url + url)
        assert asset.status_code == 200, url
    js = httpx.get(worker.url + "/docs/assets/swagger-ui-bundle.js")
    assert len(js.content) > 500_000 and "SwaggerUIBundle" in js.text


def test_docs_render_in_a_real_browser_with_the_network_cut_off(tmp_path: Path) -> None:
    """Headless Chromium and the worker in a network namespace of their own (loopback
    only): the page renders the API's operations from the worker's own assets."""
    import shutil
    import subprocess
    import sys

    unpacked = ROOT / ".browser" / "chromium"  # make setup's (tests/browser/install_chromium.sh)
    chromium = (str(unpacked) if unpacked.is_file()
                else shutil.which("chromium") or shutil.which("chromium-browser"))
    if chromium is None or shutil.which("unshare") is None:
        pytest.skip("needs Chromium (make setup unpacks Debian's into .browser) and unshare")
    port = free_port()
    script = f"""
set -e
ip link set lo up 2>/dev/null || true
{sys.executable} -m wrk_ai_inference.cli http --port {port} --model-repository {EXAMPLES} \\
    --preload digits > {tmp_path}/w.log 2>&1 &
trap "kill $! 2>/dev/null" EXIT
{sys.executable} -c "
import time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=1); break
    except Exception: time.sleep(0.1)
"
{chromium} --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \\
    --user-data-dir={tmp_path}/profile --virtual-time-budget=15000 \\
    --dump-dom http://127.0.0.1:{port}/docs 2>/dev/null
"""
    done = subprocess.run(["unshare", "--net", "bash", "-c", script], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "opblock" in dom and "/api/inference/{modelId}" in dom, dom[-2000:]
    assert "/v2/models/{model}/infer" in dom
