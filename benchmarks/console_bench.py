"""``make bench-console``: what open consoles cost the worker.

One worker (the seed API on ``digits``, as ``make bench`` runs it). Measured by the
worker's own CPU time (its process), not the client's:
  idle        the worker's CPU with no console, with ten live feeds (what a console
              keeps open: ``GET /api/live``) and, where make setup unpacked Chromium,
              with ten real console tabs in one headless Chromium
  loaded      ``make bench``'s seed-API load (worker-batch, digits) with no console and
              with ten live feeds open, in interleaved rounds: throughput, p50 and p99,
              and the ratios
Loopback only, bounded in time; the feeds' reader runs in a process of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import ServerCpu, free_port, measure, worker_server  # noqa: E402

BROWSER = ROOT / ".browser"
#: a process that keeps ``n`` live feeds open and reads every message, until killed
_FEEDS = """
import asyncio, sys, httpx
async def one(url):
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", url) as reply:
            async for _ in reply.aiter_bytes():
                pass
async def main(url, n):
    await asyncio.gather(*(one(url) for _ in range(n)))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@contextlib.contextmanager
def feeds(url: str, count: int) -> Iterator[None]:
    if count == 0:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", _FEEDS, url + "/api/live", str(count)])
    try:
        time.sleep(1.5)  # connected, past their first message
        yield
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def browsers(url: str, count: int) -> Iterator[bool]:
    """``count`` consoles, each in a headless Chromium of its own (as ten people would look:
    one browser keeps at most six connections to a host); False where there is none."""
    if not (BROWSER / "chromedriver").is_file():
        yield False
        return
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []
    try:
        for _ in range(count):
            options = webdriver.ChromeOptions()
            options.binary_location = str(BROWSER / "chromium")
            for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"):
                options.add_argument(flag)
            driver = webdriver.Chrome(options=options, service=Service(
                executable_path=str(BROWSER / "chromedriver")))
            drivers.append(driver)
            driver.get(url + "/")
        time.sleep(3)
        yield True
    finally:
        for driver in drivers:
            driver.quit()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def idle_cores(cpu: ServerCpu, seconds: float) -> float:
    before, started = cpu.seconds(), time.perf_counter()
    time.sleep(seconds)
    return (cpu.seconds() - before) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--consoles", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    manager, request = worker_server("digits", True, port)
    report: dict[str, Any] = {"consoles": args.consoles}
    with manager as cpu:
        idle = {"none": idle_cores(cpu, args.idle_seconds)}
        with feeds(url, args.consoles):
            idle["feeds"] = idle_cores(cpu, args.idle_seconds)
        with browsers(url, args.consoles) as opened:
            if opened:
                idle["tabs"] = idle_cores(cpu, args.idle_seconds)
        report["idle_cores"] = idle
        rounds: dict[str, list[dict[int, dict[str, float]]]] = {"none": [], "feeds": []}
        for _ in range(args.rounds):
            for case in ("none", "feeds"):
                with feeds(url, args.consoles if case == "feeds" else 0):
                    rounds[case].append(measure(contextlib.nullcontext(cpu), request, port,
                                                concurrencies, args.duration))
        loaded = {case: {c: {k: float(np.median([r[c][k] for r in runs]))
                             for k in ("throughput", "p50_ms", "p99_ms", "server_cores")}
                         for c in concurrencies} for case, runs in rounds.items()}
        for case, runs in rounds.items():  # the spread over rounds: what noise is here
            for c in concurrencies:
                loaded[case][c]["throughput_min"] = min(r[c]["throughput"] for r in runs)
                loaded[case][c]["throughput_max"] = max(r[c]["throughput"] for r in runs)
        report["loaded"] = loaded
    say(f"Worker CPU (cores) with {args.consoles} consoles, idle:")
    for case, cores in report["idle_cores"].items():
        label = {"none": "no console", "feeds": f"{args.consoles} live feeds",
                 "tabs": f"{args.consoles} Chromium consoles"}[case]
        say(f"  {label:<22} {cores:.4f}")
    say(f"Seed API under make bench's load (digits, worker-batch), median of {args.rounds}:")
    say(f"  {'conc':>4} {'req/s none':>11} {'req/s feeds':>12} {'ratio':>6} "
          f"{'p50 none':>9} {'p50 feeds':>10} {'p99 none':>9} {'p99 feeds':>10} "
          f"{'cores none':>11} {'cores feeds':>12}")
    for c in concurrencies:
        a, b = loaded["none"][c], loaded["feeds"][c]
        say(f"  {c:>4} {a['throughput']:>11.1f} {b['throughput']:>12.1f} "
              f"{b['throughput'] / a['throughput']:>6.3f} {a['p50_ms']:>9.2f} "
              f"{b['p50_ms']:>10.2f} {a['p99_ms']:>9.2f} {b['p99_ms']:>10.2f} "
              f"{a['server_cores']:>11.3f} {b['server_cores']:>12.3f}")
    say("  throughput range over the rounds (none | feeds):")
    for c in concurrencies:
        a, b = loaded["none"][c], loaded["feeds"][c]
        say(f"  {c:>4} {a['throughput_min']:.0f}-{a['throughput_max']:.0f} | "
              f"{b['throughput_min']:.0f}-{b['throughput_max']:.0f}")
    out = ROOT / "benchmarks" / "results" / "console.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
