"""Decoding speed when another process shares the cores: libgomp's wait against ours.

A worker serving SmolLM2 decodes 48 greedy tokens (the seed API; the worker's own
``processingTime``, median of the runs) alone, beside a busy loop pinned to one core,
and beside a churn of short niced processes (what a parallel compile looks like to the
scheduler); each neighbour runs in a session of its own, as another build or container
would. Each is measured with libgomp's default spin (``GOMP_SPINCOUNT=300000``) and with
the worker's (``runtimes.OPENMP_SPIN_ROUNDS``). Prints seconds and the ratio to the
quiet run with the worker's setting. A run slower than ``--cap`` seconds answers 504
and prints as ">cap". Usage: ``make bench-shared-cores``. Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import (  # noqa: E402
    PINNED_BUSY_LOOP,
    greedy_decode_seconds,
    neighbour,
    worker_serving,
)

from wrk_ai_inference.runtimes import OPENMP_SPIN_ROUNDS  # noqa: E402

LIBGOMP_DEFAULT = "300000"
NEIGHBOURS: dict[str, list[str] | None] = {
    "none": None,
    "a busy loop pinned to one core": PINNED_BUSY_LOOP,
    "a churn of short processes": ["bash", "-c", (
        "for i in 1 2 3 4; do (while :; do nice -n 10 " + sys.executable + " -c "
        "'x = 0\nfor i in range(2_000_000): x += i'; done) & done; wait")],
}


@contextlib.contextmanager
def beside(command: list[str] | None) -> Iterator[None]:
    if command is None:
        yield
        return
    with neighbour(command):
        time.sleep(2)  # until the churn's loops all run
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per run at most")
    args = parser.parse_args()
    results: dict[tuple[str, str], float] = {}
    for spin in (LIBGOMP_DEFAULT, OPENMP_SPIN_ROUNDS):
        os.environ["GOMP_SPINCOUNT"] = spin  # the worker inherits it and keeps it
        with tempfile.TemporaryDirectory() as root, \
                worker_serving(Path(root), {"smollm2": "smollm2"}) as worker:
            greedy_decode_seconds(worker.url, args.cap)  # warm
            for name, command in NEIGHBOURS.items():
                with beside(command):
                    runs = [greedy_decode_seconds(worker.url, args.cap) for _ in range(args.runs)]
                results[spin, name] = statistics.median(runs)
    base = results[OPENMP_SPIN_ROUNDS, "none"]
    sys.stdout.write(f"48 greedy tokens, SmolLM2, median of {args.runs} runs "
                     "(worker's processingTime)\n")
    for name in NEIGHBOURS:
        for spin in (LIBGOMP_DEFAULT, OPENMP_SPIN_ROUNDS):
            seconds = results[spin, name]
            capped = seconds == float("inf")
            shown = f">{args.cap:.0f} s" if capped else f"{seconds:.2f} s"
            ratio = f">x{args.cap / base:.0f}" if capped else f"x{seconds / base:.1f}"
            sys.stdout.write(f"{name:32} GOMP_SPINCOUNT={spin:>7}  {shown:>9}  {ratio}\n")


if __name__ == "__main__":
    main()
