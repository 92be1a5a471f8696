"""The PyTorch runtime: the same model as its ONNX twin gives the same answers (CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from wrk_ai_inference.config import Settings
from wrk_ai_inference.errors import InferenceError
from wrk_ai_inference.examples import digits_split
from wrk_ai_inference.models.manager import ModelManager

from .helpers import EXAMPLES, failed_seconds, make_repo, running_worker

torch = pytest.importorskip("torch")


def add_torch_twin(repo: Path, model_id: str = "digits-torch") -> None:
    """TorchScript of the digits MLP, from the very weights in the ONNX file."""
    weights = {t.name: numpy_helper.to_array(t)
               for t in onnx.load(str(EXAMPLES / "digits" / "model.onnx")).graph.initializer}

    class Digits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, value in weights.items():
                self.register_buffer(name, torch.from_numpy(np.array(value, np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu((x * self.scale) @ self.w1 + self.b1)
            return hidden @ self.w2 + self.b2

    folder = repo / model_id
    folder.mkdir()
    torch.jit.script(Digits()).save(str(folder / "model.pt"))
    spec = json.loads((EXAMPLES / "digits" / "model.json").read_text())
    spec.update(runtime="pytorch", file="model.pt", labels=[str(d) for d in range(10)],
                inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}])
    (folder / "model.json").write_text(json.dumps(spec))


def test_torch_twin_equals_onnx_within_1e4(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits"})
    add_torch_twin(repo)
    x = digits_split()[1][:100]
    with running_worker(repo, tmp_path / "w.log", preload=["digits", "digits-torch"]) as w, \
            httpx.Client(base_url=w.url, timeout=30) as c:
        onnx_out = c.post("/api/inference/digits", json={"inputData": x.tolist()}).json()
        torch_out = c.post("/api/inference/digits-torch", json={"inputData": x.tolist()})
        assert torch_out.status_code == 200, torch_out.text
        a = np.asarray(onnx_out["result"]["outputs"]["logits"])
        b = np.asarray(torch_out.json()["result"]["outputs"]["logits"])
        assert a.shape == b.shape == (100, 10)
        assert np.max(np.abs(a - b)) < 1e-4
        assert [p[0]["label"] for p in onnx_out["result"]["predictions"]] == \
            [p[0]["label"] for p in torch_out.json()["result"]["predictions"]]
        model = c.get("/api/models/digits-torch").json()
        assert model["runtime"] == "pytorch" and model["state"] == "loaded"


async def test_missing_extra_and_undeclared_tensors_are_named(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    repo = make_repo(tmp_path / "repo", {"digits": "digits"})
    add_torch_twin(repo)
    manager = ModelManager(Settings(modelRepository=str(repo)))  # type: ignore[call-arg]
    monkeypatch.setitem(sys.modules, "torch", None)  # as if the extra were not installed
    with pytest.raises(InferenceError) as exc:
        await manager.load("digits-torch")
    assert exc.value.code == "ERR_MODEL_LOAD_FAILED"
    assert "wrk-ai-inference[torch]" in exc.value.message
    await manager.load("digits")  # the worker itself is fine without torch
    monkeypatch.undo()
    spec = json.loads((repo / "digits-torch" / "model.json").read_text())
    del spec["inputs"]
    (repo / "digits-torch" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(InferenceError, match="must declare inputs and outputs"):
        await manager.load("digits-torch")


def add_slow_torch(repo: Path, model_id: str = "slow-torch") -> None:
    """A TorchScript loop whose length the request picks: a run torch cannot stop."""

    class Slow(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", torch.eye(256) * 0.5)

        def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
            for _ in range(int(steps.max())):
                x = torch.tanh(x @ self.w)
            return x

    folder = repo / model_id
    folder.mkdir()
    torch.jit.script(Slow()).save(str(folder / "model.pt"))
    (folder / "model.json").write_text(json.dumps({
        "runtime": "pytorch", "file": "model.pt", "maxBatchSize": 0,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 256]},
                   {"name": "steps", "datatype": "INT64", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 256]}]}))


def test_torch_deadline_answers_on_time_and_the_slot_stays_counted(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    add_slow_torch(repo)
    import time

    x = [[0.5] * 256]
    with running_worker(repo, tmp_path / "w.log", preload=["slow-torch"]) as w, \
            httpx.Client(base_url=w.url, timeout=60) as c:
        # warm up first: torch's first calls compile and allocate, and a calibration that
        # includes them makes the "long" run short enough to answer before its deadline
        for _ in range(2):
            c.post("/api/inference/slow-torch", json={"inputData": {"x": x, "steps": [50]}})
        started = time.perf_counter()
        c.post("/api/inference/slow-torch", json={"inputData": {"x": x, "steps": [2000]}})
        per_step = (time.perf_counter() - started) / 2000
        steps = int(3.0 / per_step)  # about ten times the deadline of uncancellable work
        for _ in range(3):
            before = failed_seconds(w.url, "slow-torch")
            started = time.perf_counter()
            r = c.post("/api/inference/slow-torch", json={"inputData": {"x": x, "steps": [steps]},
                                                          "options": {"timeout": 300}})
            took = time.perf_counter() - started
            if r.status_code != 200:
                break
            # it ended within its deadline: the calibration ran slower than this run did (a
            # loaded machine, TorchScript optimising after its first calls): ten times longer
            steps *= 10
        assert r.status_code == 504 and "continues until it ends" in r.json()["message"]
        answered_s = failed_seconds(w.url, "slow-torch") - before
        # on time by the worker's measure (room for a loaded machine's scheduling); the
        # client's figure only rules out waiting for the run (seconds)
        assert answered_s < 0.5, answered_s
        assert took < 2.0, took
        assert c.get("/api/capacity").json()["currentLoad"] == 1  # still running: counted
        assert "wrk_inference_overrunning 1.0" in c.get("/metrics").text
        deadline = time.monotonic() + 120
        while c.get("/api/capacity").json()["currentLoad"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/api/capacity").json()["currentLoad"] == 0
        assert "wrk_inference_overrunning 0.0" in c.get("/metrics").text
