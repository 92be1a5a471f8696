"""The worker as an installed package: a wheel, a fresh venv, rack mode against a testnet.

The fresh venv gets only the wheel; its dependencies are the checkout venv's (a .pth
line), so nothing is downloaded and the checkout's own sources are not on its path.
The sidecar's npm packages are installed on first use into a cache of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from wrk_ai_inference.rpc.client import RpcClient

from .helpers import DIGIT_ZERO, ROOT, make_repo
from .rack_helpers import local_testnet

NODE_FILES = ("sidecar.js", "frames.js", "dht.js", "rpc.js", "drive.js", "testnet.js",
              "package.json", "package-lock.json")


def _wheel(out: Path) -> Path:
    """Built from a copy of the checkout's files (setuptools writes build/ and egg-info
    beside the sources it builds)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\n")
    source = out / "source"
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(source)],
                   check=True, timeout=300, cwd=out)
    [wheel] = out.glob("wrk_ai_inference-*.whl")
    return wheel


def _fresh_venv(folder: Path, wheel: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "checkout-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


async def test_the_wheel_runs_rack_mode_from_a_fresh_venv(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    for name in NODE_FILES:
        assert f"wrk_ai_inference/p2p/node/{name}" in names, name
    assert not [n for n in names if "node_modules" in n]

    python = _fresh_venv(tmp_path / "venv", wheel)
    where = subprocess.run([str(python), "-c", "import wrk_ai_inference; "
                            "print(wrk_ai_inference.__file__)"], check=True,
                           capture_output=True, text=True, cwd=tmp_path).stdout
    assert str(tmp_path / "venv") in where, where  # the installed copy, not the checkout's

    repo = make_repo(tmp_path / "repo", {"digits": "digits"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRK_AI_INFERENCE_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    status_path = tmp_path / "status" / "wrk-ai-inference.pkg.json"
    with local_testnet(3) as bootstrap, (tmp_path / "rack.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(tmp_path / "venv" / "bin" / "wrk-ai-inference"), "rack", "--rack", "pkg",
             "--bootstrap", ",".join(bootstrap), "--store-dir", str(tmp_path / "store"),
             "--status-dir", str(tmp_path / "status"), "--model-repository", str(repo),
             "--preload", "digits"], cwd=tmp_path, env=env, stdout=log,
            stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240  # npm ci on first use
            status: dict[str, object] = {}
            while time.monotonic() < deadline and proc.poll() is None:
                if status_path.exists():
                    status = json.loads(status_path.read_text())
                    if status.get("state") == "ready":
                        break
                time.sleep(0.2)
            logs = (tmp_path / "rack.log").read_text()
            assert status.get("state") == "ready", logs[-3000:]
            assert "installing the Node sidecar's packages" in logs
            caches = list((tmp_path / "cache" / "wrk-ai-inference").glob("node-*"))
            assert len(caches) == 1 and (caches[0] / "node_modules" / "hyperdht").is_dir()
            async with RpcClient(bootstrap) as client:
                result = await client.request(str(status["rpcPublicKey"]), "runInference",
                                              {"modelId": "digits", "inputData": DIGIT_ZERO})
                assert result["result"]["predictions"][0][0]["label"] == "0"
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    assert code == 0
    assert json.loads(status_path.read_text())["state"] == "stopped"
