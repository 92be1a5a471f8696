"""``make bench-fetch``: fetching a model from peers against plain HTTP, on one machine.

One model file (``--model``, default the gemma3 GGUF), measured in one run, rounds
interleaved:
  http first    the worker's URL source (httpx, range-capable) from ``python -m
                http.server`` into an empty folder
  http repeat   the same again: HTTP has no local store, so it moves every byte again
  drive first   the worker's Hyperdrive source from a publisher's sidecar into an empty
                Corestore
  drive repeat  the same, part files deleted but the Corestore kept: the blocks are local
  floor         the same bytes over one HyperDHT connection (UDX and the secret stream)
                between two Node processes, with no Hypercore: what no drive fetch can
                beat (``stream_floor.js``)
Each prints MB/s and CPU seconds of the fetching side (this process and its sidecar) and
of the serving side, and the ratios drive/http.

Then ``--peers`` fetchers (default 10, separate sidecars and stores in this process,
started ``--stagger`` seconds apart) fetch the model from one publisher while each serves
what it has to the others; printed: bytes the publisher sent against the file's size,
and bytes the peers sent each other. Loopback only (a local testnet), bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import free_port  # noqa: E402
from wrk_ai_inference.models.sources import FetchProgress, Sources  # noqa: E402
from wrk_ai_inference.models.spec import ModelSpec  # noqa: E402
from wrk_ai_inference.p2p.drives import Drives  # noqa: E402
from wrk_ai_inference.p2p.sidecar import Sidecar  # noqa: E402


def out(line: str) -> None:
    print(line, flush=True)  # noqa: T201


@contextlib.contextmanager
def testnet() -> Iterator[list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "wrk_ai_inference.cli", "testnet",
                             "--nodes", "3"], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield list(json.loads(proc.stdout.readline())["bootstrap"])
    finally:
        proc.terminate()
        proc.wait(10)


def sidecar(bootstrap: list[str], store: Path | None) -> Sidecar:
    return Sidecar({"dhtSeed": None, "bootstrap": bootstrap, "host": "127.0.0.1",
                    "keepAlive": 2000, "storeDir": str(store) if store else None,
                    "rpc": {"seed": None, "poolLinger": 300_000, "connectionTimeout": 7000,
                            "announceInterval": 300_000}})


@contextlib.asynccontextmanager
async def running(side: Sidecar) -> AsyncIterator[Sidecar]:
    await side.start()
    try:
        yield side
    finally:
        await side.close()


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def measured(fetch: Callable[[], Awaitable[None]], fetcher: list[int],
                   server: list[int], size: int) -> tuple[float, float, float]:
    """(MB/s, fetcher CPU s, server CPU s) of one fetch."""
    before = cpu_of(fetcher), cpu_of(server)
    started = time.perf_counter()
    await fetch()
    elapsed = time.perf_counter() - started
    return size / elapsed / 1e6, cpu_of(fetcher) - before[0], cpu_of(server) - before[1]


NODE_MODULES = ROOT / "src" / "wrk_ai_inference" / "p2p" / "node" / "node_modules"
FLOOR = [shutil.which("node") or "node", str(ROOT / "benchmarks" / "stream_floor.js")]


@contextlib.contextmanager
def floor_server(boot: list[str], size: int) -> Iterator[tuple[str, int]]:
    """``stream_floor.js serve``: (its key, its pid)."""
    proc = subprocess.Popen([*FLOOR, "serve", json.dumps({"bootstrap": boot, "bytes": size})],
                            stdout=subprocess.PIPE, env={"NODE_PATH": str(NODE_MODULES)})
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())["key"], proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


async def floor_fetch(boot: list[str], key: str, size: int, server: int
                      ) -> tuple[float, float, float]:
    """(MB/s, fetcher CPU s, server CPU s) of one read of ``size`` bytes, connect excluded
    (the fetching process measures itself)."""
    before = cpu_of([server])
    proc = await asyncio.create_subprocess_exec(
        *FLOOR, "fetch", json.dumps({"bootstrap": boot, "key": key, "bytes": size}),
        stdout=subprocess.PIPE, env={"NODE_PATH": str(NODE_MODULES)})
    output, _ = await proc.communicate()
    report = json.loads(output)
    return size / report["seconds"] / 1e6, report["cpuSeconds"], cpu_of([server]) - before


def disk_bytes(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (allocated blocks, as du counts)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def model_folder(parent: Path, model: Path) -> Path:
    """A folder ``m`` to publish, holding (a link to) the model file."""
    folder = parent / "m"
    folder.mkdir(parents=True)
    (folder / model.name).symlink_to(model)
    (folder / "model.json").write_text("{}")
    return folder


def spec_for(model: Path, digest: str, source: dict[str, object]) -> ModelSpec:
    return ModelSpec.model_validate({"runtime": "llama", "file": model.name, "sha256": digest,
                                     "source": source})


async def compare(args: argparse.Namespace, model: Path, digest: str, work: Path) -> None:
    size = model.stat().st_size
    me = psutil.Process().pid
    results: dict[str, list[tuple[float, float, float]]] = {}
    disk = (0, 0)
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(model.parent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with testnet() as boot, floor_server(boot, size) as (floor_key, floor_pid):
            async with running(sidecar(boot, work / "publisher")) as publisher:
                published = await Drives(publisher).publish([model_folder(work / "pub", model)])
                drive_spec = spec_for(model, digest, {"hyperdrive": published["key"],
                                                      "path": "/m"})
                url_spec = spec_for(model, digest,
                                    {"url": f"http://127.0.0.1:{port}/{model.name}"})
                dest = work / "dest"
                for round_ in range(args.rounds):  # a first fetch needs an empty store
                    async with running(sidecar(boot, work / f"fetcher-{round_}")) as fetching:
                        sources = Sources(Drives(fetching), 60.0)

                        async def fetch(spec: ModelSpec, sources: Sources = sources) -> None:
                            shutil.rmtree(dest, ignore_errors=True)
                            dest.mkdir()
                            await sources.ensure("m", spec, dest, FetchProgress("m"))

                        fetcher = [me, fetching.pid or 0]
                        for name, spec, server in (
                                ("http first", url_spec, [http.pid]),
                                ("drive first", drive_spec, [publisher.pid or 0]),
                                ("http repeat", url_spec, [http.pid]),
                                ("drive repeat", drive_spec, [publisher.pid or 0])):
                            results.setdefault(name, []).append(await measured(
                                lambda s=spec: fetch(s), fetcher, server, size))
                        disk = disk_bytes(dest), disk_bytes(work / f"fetcher-{round_}")
                    results.setdefault("floor", []).append(
                        await floor_fetch(boot, floor_key, size, floor_pid))
    finally:
        http.terminate()
    out(f"{model.name}: {size / 1e6:.1f} MB, {args.rounds} rounds (median MB/s; CPU s per "
        "fetch: fetcher / server)")
    medians = {}
    for name, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        medians[name] = rate
        out(f"  {name:13s} {rate:7.1f} MB/s  CPU {statistics.median(r[1] for r in rows):5.2f}"
            f" / {statistics.median(r[2] for r in rows):5.2f} s")
    out(f"  drive/http first x{medians['drive first'] / medians['http first']:.2f}, repeat "
        f"x{medians['drive repeat'] / medians['http repeat']:.2f}; floor/http "
        f"x{medians['floor'] / medians['http first']:.2f}, drive first/floor "
        f"x{medians['drive first'] / medians['floor']:.2f}")
    out(f"  disk after a drive fetch, seeding: the model's folder {disk[0] / 1e6:.1f} MB, "
        f"the Corestore {disk[1] / 1e6:.1f} MB (x{sum(disk) / size:.2f} the file)")
    for name in ("http first", "drive first", "floor"):
        rows = results[name]
        out(f"  CPU ms per MB, {name}: fetcher "
            f"{statistics.median(r[1] for r in rows) * 1e9 / size:.1f}, server "
            f"{statistics.median(r[2] for r in rows) * 1e9 / size:.1f}")


async def fleet(args: argparse.Namespace, model: Path, digest: str, work: Path) -> None:
    size = model.stat().st_size
    with testnet() as boot:
        async with running(sidecar(boot, work / "fleet-publisher")) as publisher:
            drives = Drives(publisher)
            published = await drives.publish([model_folder(work / "fleet-pub", model)])
            spec = spec_for(model, digest, {"hyperdrive": published["key"], "path": "/m"})
            peers = [sidecar(boot, work / f"peer-{i}") for i in range(args.peers)]
            try:
                async def one(i: int) -> float:
                    await asyncio.sleep(i * args.stagger)
                    dest = work / f"dest-{i}"
                    dest.mkdir()
                    started = time.perf_counter()
                    await Sources(Drives(peers[i]), 120.0).ensure("m", spec, dest,
                                                                  FetchProgress(f"m{i}"))
                    return time.perf_counter() - started

                started = time.perf_counter()
                times = await asyncio.gather(*(one(i) for i in range(args.peers)))
                total = time.perf_counter() - started
                sent = (await drives.stats(published["key"]))["uploaded"]
                by_peers = [(await Drives(p).stats(published["key"]))["uploaded"]
                            for p in peers]
            finally:
                for p in peers:
                    await p.close()
    out(f"{args.peers} fetchers, {args.stagger}s apart, one publisher: all done in "
        f"{total:.1f} s (each {min(times):.1f}-{max(times):.1f} s)")
    out(f"  publisher sent {sent / 1e6:.1f} MB = x{sent / size:.2f} the file; peers sent "
        f"each other {sum(by_peers) / 1e6:.1f} MB (x{sum(by_peers) / size:.2f}); "
        f"per peer {', '.join(f'{b / 1e6:.0f}' for b in by_peers)} MB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path,
                        default=ROOT / "examples" / "models" / "gemma3" / "model.gguf")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--stagger", type=float, default=0.5)
    parser.add_argument("--section", choices=("all", "compare", "fleet"), default="all")
    args = parser.parse_args()
    model = args.model.resolve()
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    try:
        if args.section in ("all", "compare"):
            await compare(args, model, digest, work / "compare")
        if args.section in ("all", "fleet"):
            await fleet(args, model, digest, work / "fleet")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
