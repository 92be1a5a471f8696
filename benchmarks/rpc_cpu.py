"""Worker CPU per digits request: Hyperswarm RPC against HTTP, measured in one run.

A rack worker (the Python process and its Node sidecar) and an HTTP worker serve the
same digits model on this machine; rounds alternate between a closed-loop RPC client
(``rpc_bench.js``, concurrency 32) and a closed-loop HTTP client (``loadgen.py``,
concurrency 32, the seed API), and each round counts the CPU of the serving worker's
whole process tree per request answered. Prints µs per request for each transport and
the ratio RPC/HTTP (the median of the rounds). Usage: ``make bench-rpc-cpu`` (or
``python benchmarks/rpc_cpu.py --rounds 3``). Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import DIGIT_ZERO, EXAMPLES, Worker  # noqa: E402
from tests.rack_helpers import NODE_MODULES, Rack, local_testnet  # noqa: E402

from benchmarks import loadgen  # noqa: E402


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (the sidecar, decoders)."""
    return sum(cpu_by_process(pid).values())


def cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds of a process and of its descendants, by name (python, node)."""
    out: dict[str, float] = {}
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            times, name = proc.cpu_times(), proc.name()
        except psutil.NoSuchProcess:
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def rpc_round(bootstrap: list[str], rack: Rack, requests: int,
              parts: list[dict[str, float]]) -> float:
    """µs of worker CPU per request over one RPC round (``parts``: by process)."""
    plan = {"bootstrap": bootstrap, "workerKey": rack.key, "requests": requests,
            "concurrency": [32], "digits": DIGIT_ZERO, "targets": ["worker"],
            "methods": ["runInference"]}
    before = cpu_by_process(rack.proc.pid)
    subprocess.run([shutil.which("node") or "node", str(ROOT / "benchmarks" / "rpc_bench.js"),
                    json.dumps(plan)], capture_output=True, text=True, timeout=600, check=True,
                   env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    after = cpu_by_process(rack.proc.pid)
    count = requests + 200  # rpc_bench.js warms up with 200 requests
    parts.append({name: (after[name] - before.get(name, 0.0)) / count * 1e6 for name in after})
    return sum(parts[-1].values())


def http_round(worker: Worker, seconds: float) -> float:
    """µs of worker CPU per request over one HTTP round."""
    port = int(worker.url.rsplit(":", 1)[1])
    body = orjson.dumps({"inputData": [DIGIT_ZERO]})
    request = loadgen.build_request("/api/inference/digits", body)
    before = tree_cpu(worker.proc.pid)
    result = loadgen.run(loadgen.run_load(port, request, 32, seconds, warmup=0.0))
    used = tree_cpu(worker.proc.pid) - before
    assert result.errors == 0 and result.requests, result
    return used / result.requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6000, help="per RPC round")
    parser.add_argument("--seconds", type=float, default=4.0, help="per HTTP round")
    args = parser.parse_args()
    rpc: list[float] = []
    http: list[float] = []
    parts: list[dict[str, float]] = []
    with local_testnet(3) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        rack = Rack(Path(tmp), "cpu", bootstrap, EXAMPLES, preload=["digits"])
        worker = Worker(EXAMPLES, Path(tmp) / "http.log", preload=["digits"])
        try:
            rack.wait_ready()
            worker.wait_ready()
            for _ in range(args.rounds):
                rpc.append(rpc_round(bootstrap, rack, args.requests, parts))
                http.append(http_round(worker, args.seconds))
        finally:
            rack.stop()
            worker.stop()
    r, h = statistics.median(rpc), statistics.median(http)
    sys.stdout.write(f"worker CPU per digits request, concurrency 32, {args.rounds} rounds "
                     f"each, interleaved:\n  RPC  {' '.join(f'{x:.0f}' for x in rpc)} µs "
                     f"(median {r:.0f})\n  HTTP {' '.join(f'{x:.0f}' for x in http)} µs "
                     f"(median {h:.0f})\n  RPC/HTTP {r / h:.2f}\n  RPC by process: "
                     + "; ".join(", ".join(f"{k} {v:.0f}" for k, v in sorted(p.items()))
                                 for p in parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
