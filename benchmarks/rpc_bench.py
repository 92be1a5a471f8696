"""RPC benchmark: the Python worker behind the bridge vs a Node-only echo server.

Both sit on one local testnet and are measured by the same long-lived Node
client in the same run, so the ratio shows what the bridge and the Python core
add on top of Hyperswarm RPC itself. Usage: ``make bench-rpc`` (or
``python benchmarks/rpc_bench.py --requests 2000``). Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.rack_helpers import NODE_MODULES, Rack, local_testnet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rpc.json"))
    args = parser.parse_args()
    digits = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4,
              12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10,
              12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
    with local_testnet(3) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        rack = Rack(Path(tmp), "bench", bootstrap, ROOT / "examples" / "models",
                    preload=["digits"])
        try:
            rack.wait_ready()
            plan = {"bootstrap": bootstrap, "workerKey": rack.key, "requests": args.requests,
                    "concurrency": [1, 32], "digits": digits}
            node = shutil.which("node") or "node"
            started = time.time()
            done = subprocess.run([node, str(ROOT / "benchmarks" / "rpc_bench.js"),
                                   json.dumps(plan)], capture_output=True, text=True,
                                  timeout=900, env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
                                  check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stderr)
                return 1
        finally:
            rack.stop()
    results = json.loads(done.stdout)["results"]
    by = {(r["target"], r["method"], r["concurrency"]): r for r in results}
    lines = ["| method | concurrency | node-echo req/s | worker req/s | worker/echo | "
             "echo p50 ms | worker p50 ms | echo p99 ms | worker p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in ("ping", "runInference"):
        for conc in (1, 32):
            e, w = by[("node-echo", method, conc)], by[("worker", method, conc)]
            lines.append(f"| {method} | {conc} | {e['rps']:.0f} | {w['rps']:.0f} | "
                         f"{w['rps'] / e['rps']:.2f} | {e['p50']:.2f} | {w['p50']:.2f} | "
                         f"{e['p99']:.2f} | {w['p99']:.2f} |")
    table = "\n".join(lines)
    sys.stdout.write(table + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"measuredAt": started, "requests": args.requests,
                               "results": results, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
