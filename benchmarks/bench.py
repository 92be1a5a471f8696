"""``make bench``: the worker against the raw runtime and the servers people use instead.

Measured in one run, on the same model, machine and load generator:
  raw         onnxruntime in-process at batch 1 and at maxBatchSize (the ceiling)
  naive       FastAPI + uvicorn calling onnxruntime once per request (naive_server.py), on
              uvloop + httptools (what ``uvicorn[standard]`` installs)
  naive-plain the same script on uvicorn's pure-Python h11 parser and the asyncio loop (what
              a bare ``pip install fastapi uvicorn`` runs)
  mlserver    MLServer with a minimal custom ONNX runtime, without and with adaptive batching
  worker      this worker, dynamic batching off and on
for each model and concurrency; prints throughput, p50, p99 and the ratios, and
writes them to benchmarks/results/bench.json. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import build_request, run, run_load  # noqa: E402

BENCH_VENV = ROOT / ".venv-bench"
MODELS = {"digits": {"features": 64, "max_batch": 64, "delay_ms": 1},
          "mlp": {"features": 1024, "max_batch": 32, "delay_ms": 2}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout}s")


class ServerCpu:
    """CPU seconds used by a server's whole process tree (MLServer forks workers)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def seconds(self) -> float:
        total = 0.0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total


@contextlib.contextmanager
def server(args: list[str], ready_url: str, env: dict[str, str] | None = None,
           cwd: Path = ROOT) -> Iterator[ServerCpu]:
    log_path = Path(tempfile.mkdtemp(prefix="bench-server-")) / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    try:
        wait_http(ready_url, proc)
        yield ServerCpu(proc.pid)
    except Exception:
        sys.stderr.write(log_path.read_text()[-3000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raw_ceiling(model: str, seconds: float = 2.0) -> dict[str, float]:
    """Rows per second in-process, at batch 1 and at the model's maxBatchSize."""
    path = ROOT / "examples" / "models" / model / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    info = MODELS[model]
    out = {}
    for batch in (1, info["max_batch"]):
        x = np.random.default_rng(0).random((batch, info["features"]), dtype=np.float32)
        for _ in range(5):
            session.run(None, {name: x})
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.run(None, {name: x})
            runs += 1
        out[f"batch{batch}"] = runs * batch / (time.perf_counter() - started)
    return out


def sample(model: str) -> list[float]:
    rng = np.random.default_rng(7)
    values: list[float] = np.round(rng.random(MODELS[model]["features"]) * 16, 3).tolist()
    return values


def worker_server(model: str, batching: bool, port: int) -> Any:
    args = [str(ROOT / ".venv" / "bin" / "wrk-ai-inference"), "http", "--port", str(port),
            "--model-repository", str(ROOT / "examples" / "models"), "--preload", model,
            "--dynamic-batching", "true" if batching else "false",
            "--max-concurrent-inferences", "512", "--max-queued-inferences", "4096",
            "--health-check-interval", "60000"]
    body = json.dumps({"inputData": [sample(model)]}).encode()
    return (server(args, f"http://127.0.0.1:{port}/health"),
            build_request(f"/api/inference/{model}", body))


def naive_server(model: str, port: int, plain: bool = False) -> Any:
    args = [str(ROOT / ".venv" / "bin" / "uvicorn"), "benchmarks.naive_server:app",
            "--port", str(port), "--host", "127.0.0.1", "--log-level", "warning",
            "--no-access-log"]
    if plain:  # uvicorn without its optional extras: h11 and asyncio's own loop
        args += ["--http", "h11", "--loop", "asyncio"]
    env = {"MODEL": str(ROOT / "examples" / "models" / model / "model.onnx")}
    body = json.dumps({"inputData": [sample(model)]}).encode()
    return (server(args, f"http://127.0.0.1:{port}/docs", env),
            build_request("/infer", body))


def mlserver_server(model: str, batching: bool, port: int, workdir: Path) -> Any:
    folder = Path(tempfile.mkdtemp(prefix=f"mlserver-{model}-{int(batching)}-", dir=workdir))
    (folder / "m").mkdir()
    shutil.copy(ROOT / "benchmarks" / "mlserver_runtime.py", folder / "m")
    info = MODELS[model]
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "host": "127.0.0.1", "debug": False}))
    settings: dict[str, Any] = {
        "name": "m", "implementation": "mlserver_runtime.OnnxModel",
        "parameters": {"uri": str(ROOT / "examples" / "models" / model / "model.onnx")}}
    if batching:
        settings.update(max_batch_size=info["max_batch"], max_batch_time=info["delay_ms"] / 1000)
    (folder / "m" / "model-settings.json").write_text(json.dumps(settings))
    args = [str(BENCH_VENV / "bin" / "mlserver"), "start", str(folder)]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, info["features"]],
                                   "datatype": "FP32", "data": sample(model)}]}).encode()
    env = {"PYTHONPATH": str(folder / "m")}
    return (server(args, f"http://127.0.0.1:{port}/v2/models/m/ready", env, cwd=folder),
            build_request("/v2/models/m/infer", body))


def protocol_requests(model: str, rows: int) -> dict[str, bytes]:
    """The same rows as a seed-API JSON request and as a v2 binary-tensor request."""
    features = MODELS[model]["features"]
    x = np.random.default_rng(11).random((rows, features), dtype=np.float32)
    seed = json.dumps({"inputData": np.round(x, 4).tolist()}).encode()
    head = json.dumps({"inputs": [{"name": "input", "shape": [rows, features],
                                   "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "output" if model == "mlp" else "logits",
                                    "parameters": {"binary_data": True}}]}).encode()
    v2_body = head + x.astype("<f4").tobytes()
    return {
        "seed-json": build_request(f"/api/inference/{model}", seed),
        "v2-binary": build_request(f"/v2/models/{model}/infer", v2_body,
                                   headers={"Inference-Header-Content-Length": str(len(head))}),
    }


def protocols(model: str, concurrencies: list[int], duration: float) -> dict[str, Any]:
    """Rows per second through the seed JSON path and the v2 binary path, same worker."""
    port = free_port()
    manager, _ = worker_server(model, True, port)
    out: dict[str, Any] = {}
    with manager:
        for rows in (1, MODELS[model]["max_batch"]):
            for name, request in protocol_requests(model, rows).items():
                for conc in concurrencies:
                    r = run(run_load(port, request, conc, duration, warmup=1.0))
                    out[f"{name} rows={rows} c={conc}"] = {
                        "rows": rows, "concurrency": conc, "protocol": name,
                        "requests_per_s": r.throughput, "rows_per_s": r.throughput * rows,
                        "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
                    sys.stderr.write(f"    {name} rows={rows} c={conc}: "
                                     f"{r.throughput * rows:9.1f} rows/s p50 {r.p50_ms:.2f} ms"
                                     f" errors {r.errors}\n")
    return out


def make_server(name: str, model: str, port: int, tmp: Path) -> Any:
    if name.startswith("naive"):
        return naive_server(model, port, plain=name == "naive-plain")
    if name.startswith("mlserver"):
        return mlserver_server(model, name.endswith("-batch"), port, tmp)
    if name.startswith("worker"):
        return worker_server(model, name.endswith("-batch"), port)
    raise SystemExit(f"unknown server {name!r}")


def measure(manager: Any, request: bytes, port: int, concurrencies: list[int],
            duration: float) -> dict[int, dict[str, float]]:
    results = {}
    with manager as cpu:
        for conc in concurrencies:
            server_before = cpu.seconds()
            r = run(run_load(port, request, conc, duration, warmup=1.0))
            server_cores = (cpu.seconds() - server_before) / r.wall_seconds
            results[conc] = {"throughput": r.throughput, "p50_ms": r.p50_ms,
                             "p99_ms": r.p99_ms, "requests": r.requests, "errors": r.errors,
                             "server_cores": server_cores, "client_cores": r.client_cores}
            sys.stderr.write(f"    c={conc}: {r.throughput:8.1f} req/s  p50 {r.p50_ms:7.2f} ms"
                             f"  p99 {r.p99_ms:7.2f} ms  errors {r.errors}  CPU server "
                             f"{server_cores:.2f} cores, client {r.client_cores:.2f}\n")
    return results


def median_results(rounds: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Per concurrency, the median of every figure over the rounds, and the spread."""
    out: dict[int, dict[str, float]] = {}
    for conc in rounds[0]:
        points = [r[conc] for r in rounds]
        out[conc] = {key: float(np.median([p[key] for p in points])) for key in points[0]}
        out[conc]["throughput_min"] = min(p["throughput"] for p in points)
        out[conc]["throughput_max"] = max(p["throughput"] for p in points)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="digits,mlp")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=5,
                        help="every server is measured this many times, in turn; tables show "
                             "medians (this machine's speed drifts by 10-30%% within minutes)")
    parser.add_argument("--servers",
                        default="naive,naive-plain,mlserver,mlserver-batch,worker,worker-batch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench.json"))
    parser.add_argument("--section", default="servers,protocols",
                        help="servers: the comparison; protocols: seed JSON vs v2 binary")
    args = parser.parse_args()
    sections = args.section.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    wanted = args.servers.split(",")
    have_mlserver = (BENCH_VENV / "bin" / "mlserver").exists()
    report: dict[str, Any] = {"measuredAt": time.time(), "cpus": os.cpu_count(),
                              "duration": args.duration, "models": {}}
    report["rounds"] = args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(",") if "servers" in sections else []:
            raws: list[dict[str, float]] = []
            beside: list[dict[str, float]] = []  # the ceiling measured just before worker-batch
            rounds: dict[str, list[dict[int, dict[str, float]]]] = {}
            skipped: dict[str, Any] = {}
            for index in range(args.rounds):
                sys.stderr.write(f"== {model}, round {index + 1} of {args.rounds}\n")
                raws.append(raw_ceiling(model))
                sys.stderr.write(f"  raw rows/s: {raws[-1]}\n")
                # a different order each round, so that a slow spell of the machine
                # does not always fall on the same server
                order = wanted[index % len(wanted):] + wanted[:index % len(wanted)]
                for name in order:
                    if name.startswith("mlserver") and not have_mlserver:
                        skipped[name] = {"skipped": "MLServer is not installed in "
                                         ".venv-bench (make bench installs it)"}
                        continue
                    if name == "worker-batch":
                        beside.append(raw_ceiling(model))
                        sys.stderr.write(f"  raw rows/s just before worker-batch: {beside[-1]}\n")
                    port = free_port()
                    manager, request = make_server(name, model, port, Path(tmp))
                    sys.stderr.write(f"  {name}\n")
                    rounds.setdefault(name, []).append(
                        measure(manager, request, port, concurrencies, args.duration))
            entry: dict[str, Any] = {
                "raw": {k: float(np.median([r[k] for r in raws])) for k in raws[0]},
                "rawRounds": raws,
                "rawBesideWorker": beside,
                "servers": {name: skipped.get(name) or median_results(rounds[name])
                            for name in wanted},
                "rounds": rounds}
            report["models"][model] = entry
    if "protocols" in sections:
        sys.stderr.write("== protocols (mlp, batching on)\n")
        report["protocols"] = protocols("mlp", [1, 8], args.duration)
    table = render(report, concurrencies)
    sys.stdout.write(table + "\n")
    report["table"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


def render(report: dict[str, Any], concurrencies: list[int]) -> str:
    lines = [f"Load generator and servers share this machine's {report['cpus']} cores; "
             "CPU columns are cores used on average during each point (server: its whole "
             "process tree; load generator: its own process)."]
    if "protocols" in report:
        lines.append("\n### mlp through the worker: seed JSON path vs v2 binary tensors")
        lines.append("| rows per request | concurrency | seed JSON rows/s | v2 binary rows/s | "
                     "binary / JSON | JSON p50 ms | binary p50 ms |")
        lines.append("|---|---|---|---|---|---|---|")
        by = report["protocols"]
        for key, j in by.items():
            if j["protocol"] != "seed-json":
                continue
            b = by[key.replace("seed-json", "v2-binary")]
            lines.append(f"| {j['rows']} | {j['concurrency']} | {j['rows_per_s']:,.0f} | "
                         f"{b['rows_per_s']:,.0f} | {b['rows_per_s'] / j['rows_per_s']:.2f} | "
                         f"{j['p50_ms']:.2f} | {b['p50_ms']:.2f} |")
    for model, entry in report["models"].items():
        raw = entry["raw"]
        ceiling = max(raw.values())
        lines.append(f"\n### {model}: raw onnxruntime in-process "
                     + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in raw.items()))
        lines.append(f"| server | concurrency | req/s (median of {report.get('rounds', 1)}) | "
                     "req/s range | p50 ms | p99 ms | server CPU (cores) | "
                     "load generator CPU (cores) |")
        lines.append("|---|---|---|---|---|---|---|---|")
        servers = entry["servers"]
        for name, results in servers.items():
            if "skipped" in results:
                lines.append(f"| {name} | - | skipped: {results['skipped']} | | | | | |")
                continue
            for conc in concurrencies:
                r = results[conc]
                spread = (f"{r['throughput_min']:,.0f}-{r['throughput_max']:,.0f}"
                          if "throughput_min" in r else "")
                lines.append(f"| {name} | {conc} | {r['throughput']:,.0f} | {spread} | "
                             f"{r['p50_ms']:.2f} |"
                             f" {r['p99_ms']:.2f} | {r['server_cores']:.2f} |"
                             f" {r['client_cores']:.2f} |")
        best = servers.get("worker-batch", {})
        lines.append("")
        lines.append("| concurrency | worker-batch / naive | worker-batch / naive-plain | "
                     "worker-batch / mlserver-batch | worker-batch / mlserver | "
                     "worker-batch / raw ceiling | the same, ceiling measured beside it | "
                     "p50 batch on - off (ms) |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for conc in concurrencies:
            def ratio(other: str) -> str:
                return _ratio(best, servers.get(other, {}), conc)  # noqa: B023
            raw_ratio = f"{best[conc]['throughput'] / ceiling:.2f}" if conc in best else "n/a"
            off = servers.get("worker", {})
            delta = (f"{best[conc]['p50_ms'] - off[conc]['p50_ms']:+.3f}"
                     if conc in best and conc in off else "n/a")
            lines.append(f"| {conc} | {ratio('naive')} | {ratio('naive-plain')} | "
                         f"{ratio('mlserver-batch')} | {ratio('mlserver')} | {raw_ratio} | "
                         f"{_beside_ratio(entry, conc)} | {delta} |")
    return "\n".join(lines)


def _beside_ratio(entry: dict[str, Any], conc: int) -> str:
    """Median over rounds of worker-batch / the ceiling measured just before it: the
    machine's speed drifts within minutes, so the start-of-round ceiling can be far off."""
    runs, ceilings = entry.get("rounds", {}).get("worker-batch", []), entry.get("rawBesideWorker")
    if not runs or not ceilings:
        return "n/a"
    ratios = [run[conc]["throughput"] / max(raw.values()) for run, raw in zip(runs, ceilings,
                                                                               strict=True)]
    return f"{float(np.median(ratios)):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _ratio(mine: dict[int, Any], other: dict[int, Any], conc: int) -> str:
    if conc not in mine or conc not in other:
        return "n/a"
    return f"{mine[conc]['throughput'] / other[conc]['throughput']:.2f}"


if __name__ == "__main__":
    sys.exit(main())
