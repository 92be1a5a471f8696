"""The Open Inference Protocol, driven by the real tritonclient against a worker process."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

from wrk_ai_inference.examples import digits_split

from .helpers import Worker, add_string_model, make_repo, running_worker


@pytest.fixture(scope="module")
def v2_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("v2")
    repo = make_repo(root / "repo", {"digits": "digits", "mlp": "mlp", "slow": "slow"})
    add_string_model(repo)
    with running_worker(repo, root / "w.log", preload=["digits", "mlp", "upper"]) as w:
        yield w


@pytest.fixture
def client(v2_worker: Worker) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(url=v2_worker.url.removeprefix("http://"))
    yield c
    c.close()


def test_server_model_and_repository_endpoints(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])
    assert client.is_model_ready("digits") and not client.is_model_ready("slow")
    assert not client.is_model_ready("no-such-model")
    model = client.get_model_metadata("digits")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert model["platform"] == "onnx_onnxv1" and model["versions"] == ["1.0.0"]
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["digits"]["state"] == "READY" and index["slow"]["state"] == "UNAVAILABLE"
    client.load_model("slow")
    assert client.is_model_ready("slow")
    assert client.get_model_metadata("slow")["inputs"][1] == {
        "name": "iterations", "datatype": "INT64", "shape": [1]}
    client.unload_model("slow")
    assert not client.is_model_ready("slow")
    for bad in ("../etc", "no-such-model"):
        with pytest.raises(InferenceServerException) as exc:
            client.load_model(bad)
        assert exc.value.status() == "404" and "not found" in exc.value.message().lower()
    assert exc.value.message().startswith("failed to load 'no-such-model'")


@pytest.mark.parametrize("model", ["digits", "mlp"])
def test_infer_json_and_binary_match_the_seed_api(client: tc.InferenceServerClient,
                                                  v2_worker: Worker, model: str) -> None:
    if model == "digits":
        x = digits_split()[1][:16]
        name_in, name_out = "input", "logits"
    else:
        x = np.random.default_rng(5).standard_normal((4, 1024)).astype(np.float32)
        name_in, name_out = "input", "output"
    results = []
    for binary in (False, True):
        tensor = tc.InferInput(name_in, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = tc.InferRequestedOutput(name_out, binary_data=binary)
        response = client.infer(model, [tensor], outputs=[out], request_id="req-7")
        assert response.get_response()["id"] == "req-7"
        results.append(response.as_numpy(name_out))
    seed = httpx.post(f"{v2_worker.url}/api/inference/{model}",
                      json={"inputData": x.tolist()}, timeout=30).json()
    expected = np.asarray(seed["result"]["outputs"][name_out], dtype=np.float32)
    assert results[0].shape == results[1].shape == expected.shape
    assert np.array_equal(results[1], expected)  # binary: bit for bit
    assert np.allclose(results[0], expected, rtol=1e-6, atol=1e-6)  # JSON: via decimal text
    default = client.infer(model, [tensor])  # no outputs named: all of them, binary
    assert np.array_equal(default.as_numpy(name_out), expected)


def test_bytes_round_trip(client: tc.InferenceServerClient) -> None:
    words = np.array([b"hello", b"World", "\u00fcn\u00efcode".encode(), b""], dtype=object)
    for binary in (True, False):
        tensor = tc.InferInput("text", [4], "BYTES")
        tensor.set_data_from_numpy(words, binary_data=binary)
        response = client.infer("upper", [tensor],
                                outputs=[tc.InferRequestedOutput("upper", binary_data=binary)])
        got = [v.decode() if isinstance(v, bytes) else v
               for v in response.as_numpy("upper").tolist()]
        assert got == ["HELLO", "WORLD", "\u00dcN\u00cfCODE", ""]


def test_statistics_from_the_shared_history(client: tc.InferenceServerClient) -> None:
    tensor = tc.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    before = client.get_inference_statistics("digits")["model_stats"][0]
    for _ in range(5):
        client.infer("digits", [tensor])
    stats = client.get_inference_statistics("digits")["model_stats"][0]
    assert stats["name"] == "digits" and stats["version"] == "1.0.0"
    success = stats["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 5
    assert success["ns"] > 0 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    assert 0 < stats["execution_count"] <= stats["inference_count"]
    assert stats["last_inference"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert "digits" in {s["name"] for s in everything}


def _raw(v2_worker: Worker, body: bytes, header_len: int | None = None,
         model: str = "digits") -> httpx.Response:
    headers = {} if header_len is None else {"Inference-Header-Content-Length": str(header_len)}
    return httpx.post(f"{v2_worker.url}/v2/models/{model}/infer", content=body,
                      headers=headers, timeout=30)


def _json_input(**changes: object) -> dict:
    item = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    item.update(changes)
    return {"inputs": [item]}


def _binary(head: dict, blob: bytes) -> tuple[bytes, int]:
    text = json.dumps(head).encode()
    return text + blob, len(text)


MALFORMED = {
    "wrong datatype": (json.dumps(_json_input(datatype="INT64", data=[0] * 64)).encode(), None,
                       "is FP32; the request says INT64"),
    "unknown datatype": (json.dumps(_json_input(datatype="FLOAT")).encode(), None,
                         "not a v2 datatype"),
    "shape vs data": (json.dumps(_json_input(data=[0.0] * 63)).encode(), None,
                      "needs 64 elements, data has 63"),
    "bad shape": (json.dumps(_json_input(shape=[1, -64])).encode(), None, "shape must be"),
    "unknown input": (json.dumps(_json_input(name="pixels")).encode(), None, "unknown input"),
    "strings as FP32": (json.dumps(_json_input(data=["a"] * 64)).encode(), None,
                        "must be numbers"),
    "not json": (b"{nope", None, "not valid JSON"),
    "no inputs": (b'{"inputs": []}', None, "non-empty list"),
    "binary size lies": (*_binary(_json_input(parameters={"binary_data_size": 256}),
                                  b"\0" * 100), "past the end of the binary data"),
    "binary size vs shape": (*_binary(_json_input(parameters={"binary_data_size": 100}),
                                      b"\0" * 100), "needs 256 bytes, binary_data_size says 100"),
    "header past body": (b'{"inputs": []}', 100_000, "past the end"),
    "bytes left over": (*_binary(_json_input(parameters={"binary_data_size": 256}),
                                 b"\0" * 300), "not claimed by any input"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_400_with_a_reason(v2_worker: Worker, case: str) -> None:
    body, header_len, words = MALFORMED[case]
    response = _raw(v2_worker, body, header_len)
    assert response.status_code == 400, (case, response.text)
    error = response.json()["error"]
    assert response.json()["code"] in ("ERR_INVALID_INPUT", "ERR_INVALID_REQUEST")
    assert words in error, error


def test_malformed_bytes_and_unknowns(v2_worker: Worker) -> None:
    cut = struct.pack("<I", 10) + b"abc"
    head = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(cut)}}]}
    response = _raw(v2_worker, *_binary(head, cut), model="upper")
    assert response.status_code == 400 and "past the end of its data" in response.json()["error"]
    missing = _raw(v2_worker, json.dumps(_json_input()).encode(), model="nope")
    assert missing.status_code == 404 and missing.json()["code"] == "ERR_MODEL_NOT_FOUND"
    assert missing.json()["error"].startswith("Request for unknown model")  # Triton's words
    cold = _raw(v2_worker, json.dumps({"inputs": [{"name": "x", "shape": [1, 256],
                                                   "datatype": "FP32", "data": [0] * 256}]}
                                      ).encode(), model="slow")
    assert cold.status_code == 503 and cold.json()["code"] == "ERR_MODEL_NOT_AVAILABLE"
    wrong_version = httpx.post(f"{v2_worker.url}/v2/models/digits/versions/9/infer",
                               content=json.dumps(_json_input()).encode())
    assert wrong_version.status_code == 404
    right_version = httpx.post(f"{v2_worker.url}/v2/models/digits/versions/1.0.0/infer",
                               content=json.dumps(_json_input()).encode())
    assert right_version.status_code == 200
    unknown_route = httpx.get(f"{v2_worker.url}/v2/nothing/here")
    assert unknown_route.status_code == 404 and "error" in unknown_route.json()
    # after all of that, still correct
    assert httpx.get(f"{v2_worker.url}/v2/health/ready").status_code == 200
    assert "ERR_INTERNAL" not in v2_worker.logs()


def test_raw_binary_request(v2_worker: Worker) -> None:
    x = digits_split()[1][:1].astype("<f4")
    response = _raw(v2_worker, x.tobytes(), header_len=0)
    assert response.status_code == 200
    json_len = int(response.headers["inference-header-content-length"])
    head = json.loads(response.content[:json_len])
    logits = np.frombuffer(response.content[json_len:], dtype="<f4").reshape(
        head["outputs"][0]["shape"])
    assert logits.shape == (1, 10)


def test_unknown_models_use_tritons_wording(client: tc.InferenceServerClient,
                                            v2_worker: Worker) -> None:
    for call in (lambda: client.get_model_metadata("no-such-model"),
                 lambda: client.get_model_config("no-such-model"),
                 lambda: client.load_model("no-such-model")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert "Request for unknown model: 'no-such-model' is not found" in str(err.value)
        assert "/tmp" not in str(err.value)
    reply = httpx.get(f"{v2_worker.url}/v2/models/no-such-model")  # our code, beside it
    assert reply.json() == {"code": "ERR_MODEL_NOT_FOUND", "error": "Request for unknown "
                            "model: 'no-such-model' is not found in the model repository"}


def test_model_config_in_tritons_shape(client: tc.InferenceServerClient) -> None:
    config = client.get_model_config("digits")
    assert config["name"] == "digits" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] >= 0
    assert client.get_model_config("digits", model_version="1.0.0") == config
    upper = client.get_model_config("upper")  # one string per row: [1] reshaped to []
    assert upper["max_batch_size"] == 32
    assert upper["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [1],
                               "reshape": {"shape": []}}]
    with pytest.raises(InferenceServerException) as cold:  # cold, no declared inputs
        client.get_model_config("slow")
    assert cold.value.status() == "503"
    client.load_model("slow")
    try:  # maxBatchSize 0: Triton's "no batching", dims with the batch axis
        slow = client.get_model_config("slow")
        assert slow["max_batch_size"] == 0 and "dynamic_batching" not in slow
        assert {t["name"]: t["dims"] for t in slow["input"]} == {"x": [-1, 256],
                                                                  "iterations": [1]}
    finally:
        client.unload_model("slow")


def test_load_config_overrides_are_applied_or_refused(client: tc.InferenceServerClient,
                                                      v2_worker: Worker) -> None:
    before = client.get_model_config("mlp")
    client.load_model("mlp", config=json.dumps(before))  # its own config back: accepted
    changed = {**before, "max_batch_size": 8,
               "dynamic_batching": {"max_queue_delay_microseconds": 5000}}
    client.load_model("mlp", config=json.dumps(changed))
    after = client.get_model_config("mlp")
    assert after["max_batch_size"] == 8
    assert after["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert client.is_model_ready("mlp")
    x = tc.InferInput("input", [2, 1024], "FP32")
    x.set_data_from_numpy(np.ones((2, 1024), np.float32))
    assert client.infer("mlp", [x]).as_numpy("output").shape == (2, 1000)
    for bad in ({"instance_group": [{"count": 2, "kind": "KIND_GPU"}]},
                {"max_batch_size": -1}, {"platform": "tensorrt_plan"},
                {"dynamic_batching": {"preferred_batch_size": [4]}},
                {"input": [{"name": "input", "data_type": "TYPE_FP16", "dims": [64]}]}):
        with pytest.raises(InferenceServerException) as err:
            client.load_model("mlp", config=json.dumps(bad))
        assert "failed to load" in str(err.value), bad
        assert err.value.status() == "400", bad
    with pytest.raises(InferenceServerException) as err:
        client.load_model("mlp", config="{not json")
    assert "failed to load" in str(err.value)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("mlp", config=json.dumps(before), files={"file:1/model.onnx": b"x"})
    assert "failed to load" in str(err.value)
    assert client.get_model_config("mlp")["max_batch_size"] == 8  # refusals changed nothing
    client.load_model("mlp", config=json.dumps(before))
    assert client.get_model_config("mlp")["max_batch_size"] == before["max_batch_size"]
