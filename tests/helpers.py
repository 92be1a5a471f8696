"""Real worker processes and model repositories for the tests.

Everything runs on 127.0.0.1 with a free port; each worker's JSON-line log
goes to a file that a failing test can show.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: A handwritten 0 from the digits set (8x8 pixels, 0-16): a known right answer.
DIGIT_ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
              0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2,
              14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
EXAMPLES = ROOT / "examples" / "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _link_or_copy(source: str, target: str) -> None:
    """GGUF weights (100-250 MB) are hard-linked where the file system allows; everything
    else is copied, since tests overwrite files of their repositories (a link would
    change the example itself)."""
    if source.endswith(".gguf"):
        with contextlib.suppress(OSError):
            os.link(source, target)
            return
    shutil.copy2(source, target)


def make_repo(root: Path, models: dict[str, str]) -> Path:
    """Copy example models: ``{"new_id": "example_id"}``."""
    root.mkdir(parents=True, exist_ok=True)
    for new_id, source in models.items():
        shutil.copytree(EXAMPLES / source, root / new_id, copy_function=_link_or_copy)
    return root


def edit_spec(folder: Path, **changes: Any) -> None:
    """Change fields of a copied model's model.json (``parallel=1``, ...)."""
    path = folder / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def add_broken_model(root: Path, model_id: str = "broken") -> None:
    """A model that validates any 1-D float input but fails in the runtime unless it has 4
    elements (Reshape to [2, 2]): the way to reach ERR_INFERENCE_FAILED."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(np.array([2, 2], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = root / model_id
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "model.json").write_text(json.dumps({"runtime": "onnx", "file": "model.onnx"}))


class ChildProcess:
    """A worker process started by a test: stopped with SIGTERM, killed if it hangs."""

    proc: subprocess.Popen[bytes]
    _log: Any

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


class Worker(ChildProcess):
    """``wrk-ai-inference http`` in a child process."""

    def __init__(self, repo: Path, log_path: Path, host: str | None = "127.0.0.1",
                 **config: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [sys.executable, "-m", "wrk_ai_inference.cli", "http", "--port", str(self.port),
                "--model-repository", str(repo), "--health-check-interval", "1000"]
        if host is not None:  # None: whatever config/common.json and the defaults say
            args += ["--host", host]
        for key, value in config.items():
            text = json.dumps(value) if isinstance(value, list | bool) else str(value)
            args += [f"--{key.replace('_', '-')}", text]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WRK_AI_INFERENCE_")}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    terminate = ChildProcess.stop


@contextlib.contextmanager
def running_worker(repo: Path, log_path: Path, **config: Any) -> Iterator[Worker]:
    worker = Worker(repo, log_path, **config)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.terminate()


@contextlib.contextmanager
def examples_worker(factory: Any, name: str, preload: list[str], **config: Any
                    ) -> Iterator[Worker]:
    """A worker on the bundled example models with ``preload`` loaded: a test module's."""
    with running_worker(EXAMPLES, factory.mktemp(name) / "w.log", preload=preload,
                        **config) as worker:
        yield worker


@contextlib.contextmanager
def worker_serving(root: Path, models: dict[str, str], **config: Any) -> Iterator[Worker]:
    """A worker on a fresh repository of example models, all preloaded."""
    repo = make_repo(root / "repo", models)
    with running_worker(repo, root / "w.log", preload=list(models), **config) as worker:
        yield worker


def slow_iterations(seconds: float) -> int:
    """Loop steps of the ``slow`` model for about ``seconds`` of work, measured here."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(EXAMPLES / "slow" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = np.ones((1, 256), np.float32)
    # warm up first: a session's first run allocates and is slower, and a calibration that
    # includes it makes every "long" run shorter than the test thinks
    session.run(None, {"x": x, "iterations": np.array([200], np.int64)})
    steps = 20_000
    started = time.perf_counter()
    session.run(None, {"x": x, "iterations": np.array([steps], np.int64)})
    per_step = (time.perf_counter() - started) / steps
    return max(1, int(seconds / per_step))


def slow_body(iterations: int, timeout_ms: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputData": {"x": [[0.5] * 256], "iterations": [iterations]}}
    if timeout_ms is not None:
        body["options"] = {"timeout": timeout_ms}
    return body


def add_string_model(root: Path, model_id: str = "upper") -> None:
    """BYTES in, BYTES out: an ONNX StringNormalizer that upper-cases each string."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("StringNormalizer", ["text"], ["upper"],
                          case_change_action="UPPER", locale="C.UTF-8")], "upper",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("upper", TensorProto.STRING, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = root / model_id
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    (folder / "model.json").write_text(json.dumps({"runtime": "onnx", "file": "model.onnx",
                                                   "version": "1"}))


def cpu_seconds(pid: int, seconds: float = 1.0) -> float:
    """CPU time (user + system) the process spends over the next ``seconds``: near zero
    once its work has really stopped."""
    import psutil

    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    return (after.user - before.user) + (after.system - before.system)


def stats_of(url: str, model_id: str) -> dict[str, Any]:
    """The model's v2 statistics: the worker's own clock, which a loaded machine delays
    less than a client's."""
    import httpx

    stats = httpx.get(f"{url}/v2/models/{model_id}/stats", timeout=30).json()
    return stats["model_stats"][0]  # type: ignore[no-any-return]


def failed_seconds(url: str, model_id: str) -> float:
    """The time the worker itself took to answer every failed request of the model, in
    total (a deadline's answer time, by its own clock)."""
    return int(stats_of(url, model_id)["inference_stats"]["fail"]["ns"]) / 1e9


#: A busy loop pinned to the last core this process may use.
PINNED_BUSY_LOOP = ["taskset", "-c", str(max(os.sched_getaffinity(0))), sys.executable, "-c",
                    "while True: pass"]


@contextlib.contextmanager
def neighbour(command: list[str]) -> Iterator[None]:
    """``command`` running beside the worker, in a session of its own (a scheduling group
    of its own, as another build or container is); its whole group is killed on exit, and
    ``timeout`` ends it even if this process dies."""
    proc = subprocess.Popen(["timeout", "900", *command], start_new_session=True)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def greedy_decode_seconds(url: str, deadline_s: float = 120) -> float:
    """48 greedy SmolLM2 tokens through the seed API, by the worker's clock
    (``processingTime``); ``inf`` when the deadline passed first."""
    reply = httpx.post(f"{url}/api/inference/smollm2", timeout=deadline_s + 60, json={
        "inputData": {"prompt": "The capital of France is"},
        "options": {"temperature": 0, "max_tokens": 48, "timeout": deadline_s * 1000}})
    if reply.status_code == 504:
        return float("inf")
    assert reply.status_code == 200, reply.text
    assert reply.json()["result"]["usage"]["completionTokens"] == 48
    return float(reply.json()["processingTime"]) / 1000


def wait_for(what: str, check: Any, timeout: float = 60.0, every: float = 0.05) -> Any:
    """``check()``'s first true value, polled; an AssertionError naming ``what`` after
    ``timeout`` seconds (a bound for failures, never a measured duration)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
