"""What Triton's example client scripts check, through the real tritonclient (sync and
aio), against a worker serving Triton's example models rebuilt as ONNX.

The scripts themselves (``simple_http_infer_client.py``,
``simple_http_aio_infer_client.py``, ``simple_http_model_control.py``) live in Triton's
client repository and pass unchanged; these tests make the calls they make and hold the
worker to the same expectations: Triton's error wording at the start of the message,
protobuf's JSON form of 64-bit integers in a config override, seven models listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as tc
import tritonclient.http.aio as tc_aio
from tritonclient.utils import InferenceServerException

from .helpers import Worker, running_worker
from .triton_models import MODELS, build

X = np.arange(16, dtype=np.int32).reshape(1, 16)
ONES = np.full((1, 16), -1, dtype=np.int32)


@pytest.fixture(scope="module")
def triton_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("triton")
    with running_worker(build(root / "repo"), root / "w.log", preload=["simple"]) as w:
        yield w


@pytest.fixture
def client(triton_worker: Worker) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(url=triton_worker.url.removeprefix("http://"))
    yield c
    c.close()


def _request(mod: object = tc) -> tuple[list[object], list[object]]:
    """Two INT32 inputs (the first as JSON, the second binary) and both outputs (the
    first binary, the second as JSON), as the scripts send them."""
    inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"),  # type: ignore[attr-defined]
              mod.InferInput("INPUT1", [1, 16], "INT32")]  # type: ignore[attr-defined]
    inputs[0].set_data_from_numpy(X, binary_data=False)  # type: ignore[attr-defined]
    inputs[1].set_data_from_numpy(ONES, binary_data=True)  # type: ignore[attr-defined]
    outputs = [mod.InferRequestedOutput("OUTPUT0", binary_data=True),  # type: ignore[attr-defined]
               mod.InferRequestedOutput("OUTPUT1", binary_data=False)]  # type: ignore[attr-defined]
    return inputs, outputs


def _sum_and_difference(result: tc.InferResult) -> None:
    assert np.array_equal(result.as_numpy("OUTPUT0"), X + ONES)
    assert np.array_equal(result.as_numpy("OUTPUT1"), X - ONES)


def test_infer_as_the_http_example_does(client: tc.InferenceServerClient) -> None:
    inputs, outputs = _request()
    _sum_and_difference(client.infer("simple", inputs, outputs=outputs,  # type: ignore[arg-type]
                                     query_params={"test_1": 1, "test_2": 2}))
    assert len(client.get_inference_statistics(model_name="simple")["model_stats"]) == 1
    _sum_and_difference(client.infer("simple", inputs))  # type: ignore[arg-type]
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("wrong_model_name", inputs, outputs=outputs)  # type: ignore[arg-type]
    assert unknown.value.message().startswith("Request for unknown model")


async def test_infer_as_the_aio_example_does(triton_worker: Worker) -> None:
    client = tc_aio.InferenceServerClient(url=triton_worker.url.removeprefix("http://"))
    try:
        inputs, outputs = _request(tc_aio)
        _sum_and_difference(await client.infer("simple", inputs, outputs=outputs))  # type: ignore[arg-type]
        stats = await client.get_inference_statistics(model_name="simple")
        assert len(stats["model_stats"]) == 1
        with pytest.raises(InferenceServerException) as unknown:
            await client.infer("wrong_model_name", inputs, outputs=outputs)  # type: ignore[arg-type]
        assert unknown.value.message().startswith("Request for unknown model")
    finally:
        await client.close()


def test_model_control_as_the_example_does(client: tc.InferenceServerClient) -> None:
    assert len(client.get_model_repository_index()) == len(MODELS) == 7
    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as malformed:  # not JSON
        client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    assert "failed to load" in malformed.value.message()
    try:
        client.load_model("simple", config='{"max_batch_size":"16"}')  # protobuf's int64
        assert client.get_model_config("simple")["max_batch_size"] == 16
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as unknown:
            client.load_model("wrong_model_name")
        assert "failed to load" in unknown.value.message()
    finally:
        client.load_model("simple", config='{"max_batch_size": 8}')


def test_the_other_examples_answer_as_triton_s_do(client: tc.InferenceServerClient) -> None:
    """simple_string adds numbers written as text; simple_identity gives strings back."""
    client.load_model("simple_string")
    a = tc.InferInput("INPUT0", [1, 16], "BYTES")
    b = tc.InferInput("INPUT1", [1, 16], "BYTES")
    a.set_data_from_numpy(X.astype(np.bytes_).astype(object))
    b.set_data_from_numpy(ONES.astype(np.bytes_).astype(object))
    result = client.infer("simple_string", [a, b])
    assert [int(v) for v in result.as_numpy("OUTPUT0").reshape(-1)] == (X + ONES)[0].tolist()
    client.load_model("simple_identity")
    words = np.array([[b"peer"], [b"to peer"]], dtype=object)
    same = tc.InferInput("INPUT0", [2, 1], "BYTES")
    same.set_data_from_numpy(words)
    assert client.infer("simple_identity", [same]).as_numpy("OUTPUT0").tolist() == \
        words.tolist()
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}
    # dims written as text, as protobuf's JSON writes int64: the same config, accepted
    as_text = {**config, "max_batch_size": "8",
               "input": [{**t, "dims": [str(d) for d in t["dims"]]} for t in config["input"]]}
    client.load_model("simple", config=json.dumps(as_text))
    assert client.get_model_config("simple") == config
