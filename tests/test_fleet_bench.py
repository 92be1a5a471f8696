"""The fleet bench leaves nothing behind: stopped at its time limit mid-run, every
namespace, process, cgroup and scratch folder it made is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .helpers import ROOT

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")


def leftovers() -> dict[str, object]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    # the bench's own command lines: its driver, its workers' scratch folder, its testnet
    pattern = r"benchmarks/fleet_bench\.py|fleet-bench-|testnet\.js 3 10\.201\."
    procs = subprocess.run(["pgrep", "-f", pattern], capture_output=True,
                           text=True).stdout.split()
    return {"namespaces": [n for n in namespaces.split("\n") if n.startswith("wai-")],
            "processes": procs,
            "cgroups": [p for p in (Path("/sys/fs/cgroup/cpu/wai-slow"),
                                    Path("/sys/fs/cgroup/wai-slow")) if p.exists()],
            "scratch": list(Path(tempfile.gettempdir()).glob("fleet-bench-*"))}


@needs_root
def test_bench_stopped_at_its_limit_removes_everything() -> None:
    before = leftovers()
    assert not any(before.values()), before
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fleet_bench.py"),
                           "--limit", "12"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "stopped at its limit" in done.stdout, done.stdout[-2000:]
    assert "throughput" in done.stdout  # it was mid-run, workers up, when it was stopped
    assert not any(leftovers().values()), leftovers()
