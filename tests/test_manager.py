"""ModelManager against real ONNX files: loads, eviction by count and memory, failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from wrk_ai_inference.config import Settings
from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.models.manager import ModelManager, ModelState

from .helpers import make_repo


def manager(repo: Path, **kw: object) -> ModelManager:
    return ModelManager(Settings(modelRepository=str(repo), **kw))  # type: ignore[arg-type]


async def test_concurrent_requests_share_one_load(tmp_path: Path) -> None:
    m = manager(make_repo(tmp_path, {"mlp": "mlp"}), autoLoad=True)
    states: list[ModelState] = []
    m.add_listener(lambda _id, state: states.append(state))
    entries = await asyncio.gather(*(m.acquire("mlp") for _ in range(20)))
    assert states.count(ModelState.LOADING) == 1 and states.count(ModelState.LOADED) == 1
    assert all(e is entries[0] for e in entries) and entries[0].in_flight == 20


async def test_memory_limit_evicts_lru_idle_model(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a": "mlp", "b": "mlp", "d": "digits"})
    m = manager(repo, memoryLimit="180MB")
    await m.load("a")
    measured = m.entry("a").memory_bytes
    assert 100_000_000 <= measured < 180_000_000  # real growth, at least the file
    await m.load("d")
    await m.load("b")  # a + b cannot both fit: a (least recently used, idle) goes
    assert m.loaded_ids() == ["d", "b"]
    assert m.memory_used() <= 180_000_000


async def test_pinned_model_survives_memory_pressure(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"a": "mlp", "b": "mlp"})
    m = manager(repo, memoryLimit="180MB", autoLoad=True)
    pinned = await m.acquire("a")
    await m.load("b")
    assert "a" in m.loaded_ids()  # over the limit for a while, but never under a request
    m.release(pinned)


async def test_checksum_mismatch_and_corrupt_file_fail_cleanly(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"good": "digits", "badsum": "digits", "corrupt": "digits",
                                "truncated": "digits", "alien": "digits"})
    spec = json.loads((repo / "badsum" / "model.json").read_text())
    (repo / "badsum" / "model.json").write_text(json.dumps({**spec, "sha256": "0" * 64}))
    (repo / "corrupt" / "model.onnx").write_bytes(b"this is not a protobuf" * 100)
    data = (repo / "truncated" / "model.onnx").read_bytes()
    (repo / "truncated" / "model.onnx").write_bytes(data[: len(data) // 2])
    (repo / "alien" / "model.json").write_text(json.dumps({**spec, "runtime": "tensorflow"}))
    m = manager(repo)
    for model_id, words in (("badsum", "checksum mismatch"), ("corrupt", "could not load"),
                            ("truncated", "could not load"), ("alien", "not supported")):
        with pytest.raises(InferenceError) as exc:
            await m.load(model_id)
        assert exc.value.code == "ERR_MODEL_LOAD_FAILED" and words in exc.value.message
        assert m.entry(model_id).state is ModelState.FAILED
        assert m.entry(model_id).session is None
    assert m.loaded_ids() == []
    good_sum = hashlib.sha256((repo / "good" / "model.onnx").read_bytes()).hexdigest()
    spec_good = json.loads((repo / "good" / "model.json").read_text())
    (repo / "good" / "model.json").write_text(json.dumps({**spec_good, "sha256": good_sum}))
    await m.load("good")
    assert m.loaded_ids() == ["good"]


async def test_bad_manifest_and_graph_mismatch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"typo": "digits", "wrong": "digits", "escape": "digits"})
    spec = json.loads((repo / "typo" / "model.json").read_text())
    (repo / "typo" / "model.json").write_text(json.dumps({**spec, "maxBatchSise": 4}))
    (repo / "wrong" / "model.json").write_text(json.dumps(
        {**spec, "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]}))
    (repo / "escape" / "model.json").write_text(json.dumps({**spec, "file": "../digits/x"}))
    m = manager(repo)
    for model_id, words in (("typo", "maxBatchSise"), ("wrong", "'pixels'"),
                            ("escape", "relative path")):
        with pytest.raises(InferenceError, match=words):
            await m.load(model_id)
    listed = {x["id"]: x for x in await m.list_models()}
    assert listed["typo"]["state"] == "failed" and "maxBatchSise" in listed["typo"]["error"]


async def test_ids_cannot_escape_the_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits"})
    make_repo(tmp_path / "outside", {"secret": "digits"})
    (repo / "link").symlink_to(tmp_path / "outside" / "secret")
    m = manager(repo)
    for bad in ("../outside/secret", "link", "..", "a/b", "", "x" * 129, "digits\x00"):
        with pytest.raises(InferenceError) as exc:
            m.entry(bad)
        assert exc.value.code == "ERR_MODEL_NOT_FOUND"
