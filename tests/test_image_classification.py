"""Image classification through the API with PNG bytes, against the model in-process."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from wrk_ai_inference.examples import digits_png, digits_split

from .helpers import EXAMPLES, Worker, worker_serving

pytestmark = pytest.mark.skipif(not (EXAMPLES / "digits-cnn" / "model.onnx").exists(),
                                reason="run `make setup` to build the digits-cnn example")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with worker_serving(tmp_path_factory.mktemp("cnn"), {"digits-cnn": "digits-cnn"}) as w:
        yield w


def test_png_accuracy_through_the_api_matches_in_process(cnn: Worker) -> None:
    _, x_test, _, y_test = digits_split()
    pngs = [digits_png(x) for x in x_test]
    # in-process, decoded here from the same PNG bytes
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p)), np.float32)[None] / 255
                       for p in pngs])
    session = ort.InferenceSession(str(EXAMPLES / "digits-cnn" / "model.onnx"))
    local = float(np.mean(session.run(None, {"image": pixels})[0].argmax(1) == y_test))
    predicted: list[int] = []
    with httpx.Client(base_url=cnn.url, timeout=60) as client:
        for start in range(0, len(pngs), 50):
            batch = [base64.b64encode(p).decode() for p in pngs[start:start + 50]]
            r = client.post("/api/inference/digits-cnn", json={"inputData": batch})
            assert r.status_code == 200, r.text
            predicted += [int(p[0]["label"]) for p in r.json()["result"]["predictions"]]
        served = float(np.mean(np.array(predicted) == y_test))
        assert len(predicted) == 450
        assert abs(served - local) <= 0.001 and served > 0.95, (served, local)
        single = client.post("/api/inference/digits-cnn",
                             json={"inputData": base64.b64encode(pngs[0]).decode(),
                                   "options": {"topK": 2}}).json()["result"]
        assert len(single["predictions"][0]) == 2
        buffer = io.BytesIO()
        Image.open(io.BytesIO(pngs[0])).convert("RGB").resize((32, 32)).save(buffer, "JPEG")
        jpeg = client.post("/api/inference/digits-cnn",
                           json={"inputData": [base64.b64encode(buffer.getvalue()).decode()]})
        assert jpeg.status_code == 200  # other formats and sizes are converted and resized


@pytest.mark.parametrize(("data", "words"), [
    ("not base64!", "not valid base64"),
    (base64.b64encode(b"plain text, no image").decode(), "not a PNG or JPEG"),
    ([123], "must be a base64 string"),
    ([], "non-empty list"),
])
def test_bad_images_are_400(cnn: Worker, data: object, words: str) -> None:
    r = httpx.post(f"{cnn.url}/api/inference/digits-cnn", json={"inputData": data})
    assert r.status_code == 400 and r.json()["error"] == "ERR_INVALID_INPUT"
    assert words in r.json()["message"], r.json()["message"]
