"""deploy/servingruntime.yaml: the worker started exactly as the manifest says (command,
args, environment, port) answers every probe path and an inference over v2.

Two things differ from a cluster, both named here: the repository the storage
initializer would mount at /mnt/models is a folder of the test's, and the bind address
0.0.0.0 becomes 127.0.0.1 (tests stay on loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from .helpers import DIGIT_ZERO, ROOT, make_repo

MANIFEST = ROOT / "deploy" / "servingruntime.yaml"


def _container() -> dict[str, Any]:
    spec = yaml.safe_load(MANIFEST.read_text())
    assert spec["kind"] == "ServingRuntime" and spec["spec"]["protocolVersions"] == ["v2"]
    assert {f["name"] for f in spec["spec"]["supportedModelFormats"]} == \
        {"onnx", "pytorch", "gguf"}
    (container,) = spec["spec"]["containers"]
    return dict(container)


def test_the_worker_runs_as_the_serving_runtime_says(tmp_path: Path) -> None:
    container = _container()
    repo = make_repo(tmp_path / "models", {"digits": "digits"})
    args = [str(repo) if a == "/mnt/models" else "127.0.0.1" if a == "0.0.0.0" else a
            for a in container["args"]]
    command = shutil.which(container["command"][0], path=str(Path(os.sys.executable).parent))
    assert command is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRK_AI_INFERENCE_")}
    env.update({e["name"]: e["value"] for e in container["env"]})
    port = container["ports"][0]["containerPort"]
    with (tmp_path / "w.log").open("wb") as log:
        proc = subprocess.Popen([command, *container["command"][1:], *args], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        probes = {name: container[name]["httpGet"] for name in
                  ("startupProbe", "readinessProbe", "livenessProbe")}
        assert all(p["port"] == port for p in probes.values())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "w.log").read_text()[-3000:]
            try:
                if httpx.get(url + probes["startupProbe"]["path"], timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        for probe in probes.values():
            assert httpx.get(url + probe["path"], timeout=5).status_code == 200, probe
        # autoLoad from the manifest's environment: the first request loads the model
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": DIGIT_ZERO}]}
        reply = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        logits = reply.json()["outputs"][0]["data"]
        assert max(range(10), key=lambda i: logits[i]) == 0
    finally:
        proc.terminate()
        proc.wait(30)
