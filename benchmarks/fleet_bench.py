"""``make bench-fleet``: a fleet of rack workers on separate hosts, driven by FleetClient.

Hosts are network namespaces (``netns.py``): the testnet in one, each worker in its own,
the load generator in one more; made at the start and removed at the end, also after a
failure or a time-out (``--limit``). Workers serve ``--model`` (default digits) with
debug lines on and request journals that hold a kill phase whole, so each run of a
``requestId`` is counted on the worker that ran it (``tests/rack_helpers.count_runs``).
Three parts, one run:

  throughput  1, 2, then 3 workers; ``--lanes`` callers in a closed loop; requests/s,
              latency and CPU per worker (its Python process and its sidecar) and of
              the client; for ``--model`` (RPC-bound) and for the ``slow`` model at
              ``--heavy-ms`` of CPU per request (compute-bound)
  kill        3 workers under load; one host killed (every process, SIGKILL) and
              started again ``--restart-after`` s later: p99 per second against the
              steady state, when the restarted worker takes load again, and every
              request's runs counted on the workers; once with FleetClient, once with
              the Node example (examples/fleet-client.js) as the client
  routing     one worker made slow (``--slow-cpu`` of a core, ``--slow-slots`` slots);
              power of two choices and random choice (what hp-svc-facs-net does)
              alternated in one run: share sent to the slow worker, p50/p99
Writes benchmarks/results/fleet-bench.json. Needs root (ip netns).

The workers set ``dhtOpts.firewalled: false``: servers on routable addresses. Left to
HyperDHT's default (firewalled until its periodic check says otherwise), two fresh
peers on different addresses of one flat network connected but exchanged nothing here
(the stream opened, then timed out): holepunching without a NAT in the way did not
work, and the loopback tests never meet it (same-host peers take the LAN shortcut).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import slow_body, slow_iterations  # noqa: E402
from tests.rack_helpers import count_runs  # noqa: E402

from benchmarks import netns  # noqa: E402
from wrk_ai_inference.errors import InferenceError  # noqa: E402
from wrk_ai_inference.fleet import FleetClient  # noqa: E402
from wrk_ai_inference.p2p.sidecar import node_dir  # noqa: E402
from wrk_ai_inference.rpc.client import RpcClient  # noqa: E402

WORKERS = ["w0", "w1", "w2"]
RESULTS = ROOT / "benchmarks" / "results" / "fleet-bench.json"


@dataclass
class Rec:
    rid: str
    sent: float  # seconds since the load began
    latency: float
    worker: str | None
    error: str | None


def out(*parts: object) -> None:
    print(*parts, flush=True)  # noqa: T201


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Worker:
    """One rack worker on its own host; killed as a host dies, started again the same."""

    def __init__(self, hosts: netns.Hosts, name: str, work: Path, bootstrap: list[str],
                 repo: Path, model: str) -> None:
        self.hosts, self.name, self.work = hosts, name, work / name
        self.bootstrap, self.repo, self.model = bootstrap, repo, model
        self.key = ""
        self.log = self.work / "worker.log"
        self.journal = self.work / name / "requests.journal"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self, **config: Any) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        config_dir = self.work / "config"
        (config_dir / "facs").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "config" / "common.json", config_dir / "common.json")
        # a server on a routable address, as in a data centre: see the module's docstring
        (config_dir / "facs" / "net.config.json").write_text(
            json.dumps({"dhtOpts": {"firewalled": False}}))
        args = [sys.executable, "-m", "wrk_ai_inference.cli", "rack", "--rack", self.name,
                "--config", str(config_dir),
                "--bootstrap", ",".join(self.bootstrap), "--store-dir", str(self.work),
                "--status-dir", str(self.work), "--model-repository", str(self.repo),
                "--preload", json.dumps([self.model, "slow"]), "--debug", "true",
                # every call of a kill phase stays in the journal's two generations,
                # where its runs are counted (the default rotates within the phase)
                "--request-id-window", "100000"]
        for key, value in config.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.hosts.command(self.name, args), cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()

    def wait_ready(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            if b"rack worker ready" in self.log.read_bytes()[self._offset:]:
                status = json.loads((self.work / f"wrk-ai-inference.{self.name}.json")
                                    .read_text())
                self.key = status["rpcPublicKey"]
                return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready")

    def kill(self) -> None:
        self.hosts.kill(self.name)
        if self.proc is not None:
            self.proc.wait()

    def cpu(self) -> float:
        return cpu_seconds(self.hosts.pids(self.name))


async def load(fleet: FleetClient, model: str, inputs: Any, lanes: int, seconds: float,
               prefix: str, timeout_ms: int = 30_000) -> list[Rec]:
    """``lanes`` callers in a closed loop for ``seconds`` (each ends its last call)."""
    records: list[Rec] = []
    began = time.monotonic()

    async def lane(n: int) -> None:
        k = 0
        while (sent := time.monotonic()) - began < seconds:
            rid = f"{prefix}-{n}-{k}"
            k += 1
            try:
                result = await fleet.run_inference(model, inputs, request_id=rid,
                                                   timeout_ms=timeout_ms)
                records.append(Rec(rid, sent - began, time.monotonic() - sent,
                                   result["worker"], None))
            except InferenceError as exc:
                records.append(Rec(rid, sent - began, time.monotonic() - sent, None,
                                   f"{exc.code}: {exc.message}"))

    await asyncio.gather(*(lane(n) for n in range(lanes)))
    return records


async def node_load(bootstrap: list[str], model: str, inputs: Any, lanes: int, seconds: float,
                    prefix: str, marks: dict[str, float], loaded: asyncio.Event
                    ) -> tuple[list[Rec], dict[str, dict[str, Any]]]:
    """The Node example's load, one JSON line per request; its clock starts with its
    first answer (Node's start-up and first lookup are not part of the run)."""
    plan = {"bootstrap": bootstrap, "host": "0.0.0.0", "modelId": model, "inputData": inputs,
            "requests": 10**9, "concurrency": lanes, "prefix": prefix,
            "seconds": seconds + 1}
    proc = await asyncio.create_subprocess_exec(
        "node", str(ROOT / "examples" / "fleet-client.js"), json.dumps(plan),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE, cwd=ROOT,  # open:
        # the example stops when its stdin ends
        env={**os.environ, "NODE_PATH": str(node_dir() / "node_modules")}, limit=1 << 24)
    assert proc.stdout is not None
    records: list[Rec] = []
    stats: dict[str, dict[str, Any]] = {}
    offset = 0.0
    async for line in proc.stdout:
        entry = json.loads(line)
        if "stats" in entry:
            stats = entry["stats"]
            continue
        sent, latency = entry["at"] / 1000, entry["ms"] / 1000
        if not loaded.is_set():
            offset = sent + 1.0  # a second to warm up, as the Python client has
            marks["began"] = time.monotonic() - latency + 1.0
            loaded.set()
        if sent >= offset:
            records.append(Rec(entry["requestId"], sent - offset, latency,
                               entry.get("worker"), entry.get("error")))
    await proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()
    return records, stats


def summary(records: list[Rec], seconds: float) -> dict[str, Any]:
    ok = [r.latency * 1000 for r in records if r.error is None]
    result = {"requests": len(records), "errors": len(records) - len(ok),
              "reqPerS": round(len(ok) / seconds, 1), "p50Ms": round(p(ok, 0.5), 2),
              "p99Ms": round(p(ok, 0.99), 2)}
    errors = collections.Counter(r.error for r in records if r.error is not None)
    if errors:
        result["errorKinds"] = dict(errors.most_common(3))
    return result


class Bench:
    def __init__(self, args: argparse.Namespace, hosts: netns.Hosts, work: Path,
                 bootstrap: list[str]) -> None:
        self.args, self.hosts, self.work, self.bootstrap = args, hosts, work, bootstrap
        repo = work / "repo"
        for model in {args.model, "slow"}:
            shutil.copytree(ROOT / "examples" / "models" / model, repo / model)
        self.inputs = json.loads(args.input)
        # a model whose requests cost CPU, not RPC: where cores run out with more workers
        self.heavy = slow_body(slow_iterations(args.heavy_ms / 1000))["inputData"]
        self.workers = [Worker(hosts, n, work, bootstrap, repo, args.model) for n in WORKERS]
        self.report: dict[str, Any] = {"model": args.model, "lanes": args.lanes,
                                       "cores": os.cpu_count()}

    def fleet(self, policy: str = "p2c") -> FleetClient:
        return FleetClient(self.bootstrap, policy=policy)  # type: ignore[arg-type]

    async def measure(self, policy: str, prefix: str, workers: list[Worker],
                      model: str | None = None, inputs: Any = None) -> dict[str, Any]:
        args = self.args
        model = model or args.model
        inputs = self.inputs if inputs is None else inputs
        async with self.fleet(policy) as fleet:
            await load(fleet, model, inputs, args.lanes, 1.0, f"{prefix}-warm")
            cpu0 = {w.name: w.cpu() for w in workers}
            client0 = cpu_seconds([os.getpid(), *self._children()])
            began = time.monotonic()
            records = await load(fleet, model, inputs, args.lanes, args.seconds, prefix)
            wall = time.monotonic() - began
            result = summary(records, wall)
            result["cpuPerWorker"] = {w.name: round((w.cpu() - cpu0[w.name]) / wall, 2)
                                      for w in workers}
            result["cpuClient"] = round((cpu_seconds([os.getpid(), *self._children()])
                                         - client0) / wall, 2)
            share = collections.Counter(r.worker for r in records if r.error is None)
            result["share"] = {w.name: round(share[w.key] / max(1, sum(share.values())), 3)
                               for w in workers}
            result["refused"] = sum(s["refused"] for s in fleet.stats().values())
        return result

    @staticmethod
    def _children() -> list[int]:
        """The client's own sidecar (the workers are children too, in other hosts)."""
        import psutil

        return [c.pid for c in psutil.Process().children()
                if any("sidecar.js" in part for part in c.cmdline())]

    async def throughput(self) -> None:
        rows = []
        for n, worker in enumerate(self.workers, 1):
            worker.start()
            worker.wait_ready()
            await asyncio.sleep(0.5)  # its announcement
            for model, inputs in ((self.args.model, self.inputs), ("slow", self.heavy)):
                row = await self.measure("p2c", f"tp{n}-{model}", self.workers[:n], model,
                                         inputs)
                row.update(workers=n, model=model)
                rows.append(row)
                out(f"throughput {model}, {n} worker(s): {row}")
        self.report["throughput"] = rows

    async def kill(self, client: str) -> None:
        """``client``: ``python`` (FleetClient) or ``node`` (examples/fleet-client.js)."""
        args, victim = self.args, self.workers[1]
        seconds = args.kill_at + args.restart_after + args.after
        marks: dict[str, float] = {}
        loaded = asyncio.Event()  # the load runs: the clock of the kill starts

        async def chaos() -> None:
            await loaded.wait()
            began = marks["began"]
            await asyncio.sleep(max(0.0, began + args.kill_at - time.monotonic()))
            await asyncio.to_thread(victim.kill)
            marks["killed"] = time.monotonic() - began
            await asyncio.sleep(args.restart_after)
            victim.start()
            ready = await asyncio.to_thread(victim.wait_ready)
            marks["ready"] = ready - began

        stats: dict[str, dict[str, Any]]
        prefix = "kill-py" if client == "python" else "kill-node"
        if client == "python":
            async with self.fleet() as fleet:
                await load(fleet, args.model, self.inputs, args.lanes, 1.0, f"{prefix}-warm")
                marks["began"] = time.monotonic()
                loaded.set()
                records, _ = await asyncio.gather(
                    load(fleet, args.model, self.inputs, args.lanes, seconds, prefix),
                    chaos())
                stats = fleet.stats()
        else:
            (records, stats), _ = await asyncio.gather(
                node_load(self.bootstrap, args.model, self.inputs, args.lanes, seconds,
                          prefix, marks, loaded), chaos())
        killed, ready = marks["killed"], marks["ready"]
        steady = [r.latency * 1000 for r in records
                  if r.error is None and 1.0 <= r.sent < killed]
        steady_p99 = p(steady, 0.99)
        per_second = []
        for start in range(int(killed) - 1, int(seconds)):
            window = [r.latency * 1000 for r in records
                      if r.error is None and start <= r.sent < start + 1]
            per_second.append({"from": start - killed, "p99Ms": round(p(window, 0.99), 2),
                               "n": len(window)})
        recovered = next((w["from"] for i, w in enumerate(per_second) if w["from"] >= 0
                          and all(x["p99Ms"] <= 2 * steady_p99 for x in per_second[i:])),
                         None)
        after = [r for r in records if r.worker == victim.key and r.sent + r.latency >= ready]
        first_load = min((r.sent + r.latency for r in after), default=None)
        ended, started = count_runs(((w.log, w.journal) for w in self.workers), f"{prefix}-")
        ids = [r.rid for r in records if r.error is None]
        async with RpcClient(self.bootstrap) as rpc:
            victim_stats = await rpc_retrying(rpc, victim.key, "getStats")
        result = {
            **summary(records, seconds), "killedAt": round(killed, 2),
            "restartedReadyAt": round(ready, 2), "steadyP99Ms": round(steady_p99, 2),
            "perSecondAfterKill": per_second,
            "p99Within2xSteadyFromS": None if recovered is None else round(recovered, 2),
            "restartedFirstAnswerAfterReadyS": None if first_load is None
            else round(first_load - ready, 2),
            "restartedAnswers": len(after),
            "slowestMs": sorted(round(r.latency * 1000) for r in records)[-8:],
            "runsThatAnswered": dict(collections.Counter(ended[i] for i in ids)),
            "startedTwice": sum(1 for i in ids if started[i] > 1),
            "answeredButNoRun": sum(1 for i in ids if ended[i] == 0),
            "restartedWorkerRequestIds": victim_stats.get("requestIds"),
            "failedOver": sum(s["failedOver"] for s in stats.values()),
        }
        self.report[f"kill-{client}"] = result
        out(f"kill ({client} client):", json.dumps(result))

    async def routing(self) -> None:
        args, slow = self.args, self.workers[2]
        slow.kill()
        slow.start(max_concurrent_inferences=args.slow_slots)
        slow.wait_ready()
        limited = cpu_limit(slow, args.slow_cpu)
        if not limited:
            out("no CPU cgroup here: the slow worker is slowed by its slots only")
        await asyncio.sleep(0.5)
        rounds: dict[str, list[dict[str, Any]]] = {"p2c": [], "random": []}
        for i in range(args.rounds):
            for policy in ("p2c", "random"):
                row = await self.measure(policy, f"route-{policy}-{i}", self.workers)
                rounds[policy].append(row)
                out(f"routing {policy} round {i}: {row}")
        result: dict[str, Any] = {"slowCpu": args.slow_cpu if limited else None,
                                  "slowSlots": args.slow_slots}
        for policy, rows in rounds.items():
            result[policy] = {
                "reqPerS": round(statistics.mean(r["reqPerS"] for r in rows), 1),
                "p50Ms": round(statistics.median(r["p50Ms"] for r in rows), 2),
                "p99Ms": round(statistics.median(r["p99Ms"] for r in rows), 2),
                "slowShare": round(statistics.mean(r["share"][slow.name] for r in rows), 3),
                "refused": sum(r["refused"] for r in rows), "rounds": rows}
        result["p99RandomOverP2c"] = round(result["random"]["p99Ms"] / result["p2c"]["p99Ms"],
                                           2)
        self.report["routing"] = result


async def rpc_retrying(rpc: RpcClient, key: str, method: str, tries: int = 10) -> Any:
    """A first call to a worker that has just come back can meet its old DHT record."""
    for _ in range(tries - 1):
        with contextlib.suppress(InferenceError):
            return await rpc.request(key, method, timeout_ms=2_000)
        await asyncio.sleep(0.5)
    return await rpc.request(key, method, timeout_ms=2_000)


def cpu_limit(worker: Worker, fraction: float) -> bool:
    """Ask the process outside the hosts (``ip netns exec`` gives a host a sysfs without
    the cgroup tree) to put the worker's processes in a CPU cgroup."""
    request = worker.work.parent / "cpu-limit.json"
    request.write_text(json.dumps({"pids": worker.hosts.pids(worker.name),
                                   "fraction": fraction}))
    answer = request.with_suffix(".done")
    for _ in range(100):
        if answer.exists():
            return bool(json.loads(answer.read_text())["limited"])
        time.sleep(0.05)
    return False


def apply_cpu_limit(pids: list[int], fraction: float) -> bool:
    root = Path("/sys/fs/cgroup")
    v1 = root / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        group = v1 / "wai-slow"
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(int(fraction * 100_000)))
    elif (root / "cgroup.controllers").exists():
        group = root / "wai-slow"
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{int(fraction * 100_000)} 100000")
    else:
        return False
    for pid in pids:
        with contextlib.suppress(OSError):
            (group / "cgroup.procs").write_text(str(pid))
    return True


def remove_cpu_limit() -> None:
    root = Path("/sys/fs/cgroup")
    for group in (root / "cpu" / "wai-slow", root / "wai-slow"):
        with contextlib.suppress(OSError):
            group.rmdir()


async def inside(args: argparse.Namespace) -> int:
    """In the client's host: the testnet, the workers, the load."""
    plan = json.loads(args.inside)
    hosts = netns.Hosts()
    hosts.addresses = plan["addresses"]
    work = Path(plan["work"])
    dht_hosts = [plan["addresses"]["dht"], *plan["extra"]["dht"]]
    testnet = subprocess.Popen(hosts.command("dht", [
        sys.executable, "-m", "wrk_ai_inference.cli", "testnet", "--nodes", "3",
        "--host", ",".join(dht_hosts)]), stdout=subprocess.PIPE, cwd=ROOT)
    assert testnet.stdout is not None
    bootstrap = json.loads(testnet.stdout.readline())["bootstrap"]
    bench = Bench(args, hosts, work, bootstrap)
    try:
        await bench.throughput()
        await bench.kill("python")
        await bench.kill("node")
        await bench.routing()
    finally:
        for worker in bench.workers:
            worker.kill()
        testnet.kill()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(bench.report, indent=2))
    out(json.dumps({k: v for k, v in bench.report.items() if k != "routing"}, indent=1))
    out("routing:", json.dumps({k: v if not isinstance(v, dict) else
                                  {kk: vv for kk, vv in v.items() if kk != "rounds"}
                                  for k, v in bench.report["routing"].items()}))
    return 0


def serve_inside(inner: subprocess.Popen[bytes], work: Path, limit: float) -> int:
    """Wait for the run inside, doing what it cannot do from there; stop it at ``limit``."""
    deadline = time.monotonic() + limit
    request = work / "cpu-limit.json"
    while inner.poll() is None:
        if time.monotonic() > deadline:
            inner.kill()
            out(f"bench-fleet stopped at its limit ({limit:.0f} s)")
            return 1
        if request.exists() and not request.with_suffix(".done").exists():
            asked = json.loads(request.read_text())
            limited = apply_cpu_limit(asked["pids"], asked["fraction"])
            request.with_suffix(".done").write_text(json.dumps({"limited": limited}))
        time.sleep(0.05)
    return inner.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--input", default=json.dumps([[0.0] * 64]), help="inputData, JSON")
    parser.add_argument("--heavy-ms", type=float, default=10.0,
                        help="CPU per request of the compute-bound throughput rounds")
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="each measured round")
    parser.add_argument("--kill-at", type=float, default=6.0)
    parser.add_argument("--restart-after", type=float, default=2.0)
    parser.add_argument("--after", type=float, default=12.0, help="load after the restart")
    parser.add_argument("--slow-cpu", type=float, default=0.15)
    parser.add_argument("--slow-slots", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=float, default=600, help="the whole run, seconds")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return asyncio.run(inside(args))
    if os.geteuid() != 0 or shutil.which("ip") is None:
        out("bench-fleet needs root and iproute2 (ip netns): skipped")
        return 0
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        with netns.hosts() as hosts:
            hosts.add("dht", extra=2)  # three testnet nodes on three addresses
            for name in ["client", *WORKERS]:
                hosts.add(name)
            plan = json.dumps({"addresses": hosts.addresses, "extra": hosts.extra_addresses,
                               "work": str(work)})
            argv = [a for a in sys.argv[1:]] + ["--inside", plan]
            inner = subprocess.Popen(hosts.command("client", [sys.executable, __file__, *argv]),
                                     cwd=ROOT)
            return serve_inside(inner, work, args.limit)
    finally:
        remove_cpu_limit()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
