"""``make bench-speech``: transcription speed, the worker against faster-whisper in process.

One recording (``quick_brown_fox.wav``, 2.9 s of speech: one window, nothing said twice,
so Whisper's temperature fallback, which samples, never runs and each transcription does
the same work) through ``whisper-tiny-en``, ``--count`` times; the real-time factor
(processing seconds per second of audio, lower is faster) of:
  ceiling    faster-whisper called in this process on the same folder and settings (int8,
             beam 5, threads = usable cores): one transcription after another, then four
             at once (four threads on one model with four CTranslate2 workers)
  worker     the worker's seed API: one request after another, then four at once
(``--ceiling-allocator worker`` gives the ceiling the allocator settings the worker gives
its transcription children, ``runtimes/whisper.py``'s ``ALLOCATOR``)
interleaved over rounds (the ceiling first in even rounds, the worker first in odd ones),
medians printed with the ratio ceiling / worker (1.0: as fast as the library itself) and
each round's ratio. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import free_port, server  # noqa: E402
from wrk_ai_inference.runtimes.whisper import ALLOCATOR  # noqa: E402
from wrk_ai_inference.tasks.speech_to_text import decode  # noqa: E402

MODEL = ROOT / "examples" / "models" / "whisper-tiny-en"


def recording() -> tuple[bytes, np.ndarray]:
    data = (ROOT / "tests" / "fixtures" / "audio" / "quick_brown_fox.wav").read_bytes()
    return data, decode(data, 600)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=24, help="transcriptions per point")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ceiling-allocator", choices=("glibc", "worker"), default="glibc",
                        help="the in-process ceiling with glibc's default allocator settings "
                             "(as a program calling faster-whisper has them) or with the ones "
                             "the worker gives its transcription children")
    args = parser.parse_args()
    if args.ceiling_allocator == "worker" and any(k not in os.environ for k in ALLOCATOR):
        # glibc reads them at start: run this bench again with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**ALLOCATOR, **os.environ})
    from faster_whisper import WhisperModel

    wav, samples = recording()
    n = args.count
    duration = samples.size / 16000 * n
    threads = len(os.sched_getaffinity(0))
    one_model = WhisperModel(str(MODEL), device="cpu", compute_type="int8",
                             cpu_threads=threads, num_workers=1)
    four_model = WhisperModel(str(MODEL), device="cpu", compute_type="int8",
                              cpu_threads=threads, num_workers=4)

    def in_process(model: WhisperModel) -> None:
        segments, _ = model.transcribe(samples, language="en", beam_size=5, vad_filter=False)
        for _ in segments:
            pass

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    body = {"inputData": {"audio": base64.b64encode(wav).decode()}}
    args_worker = [str(ROOT / ".venv" / "bin" / "wrk-ai-inference"), "http", "--port",
                   str(port), "--model-repository", str(ROOT / "examples" / "models"),
                   "--preload", '["whisper-tiny-en"]', "--inference-timeout", "600000",
                   "--health-check-interval", "60000"]
    results: dict[str, list[float]] = {k: [] for k in
                                       ("ceiling-1", "worker-1", "ceiling-4", "worker-4")}

    pool = ThreadPoolExecutor(4)
    # one client for every call, as a real one keeps its connections: a new httpx client
    # builds an SSL context, tens of milliseconds of the bench's CPU that the worker's
    # figure would carry
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=4))

    def worker_call() -> None:
        reply = http.post(f"{url}/api/inference/whisper-tiny-en", json=body)
        assert reply.status_code == 200, reply.text

    def one_after_another(call: Callable[[], None]) -> None:
        for _ in range(n):
            call()

    def four_at_once(call: Callable[[], None]) -> None:
        list(pool.map(lambda _: call(), range(n)))

    points: dict[str, Callable[[], None]] = {
        "ceiling-1": lambda: one_after_another(lambda: in_process(one_model)),
        "worker-1": lambda: one_after_another(worker_call),
        "ceiling-4": lambda: four_at_once(lambda: in_process(four_model)),
        "worker-4": lambda: four_at_once(worker_call),
    }

    def timed(point: str) -> float:
        started = time.perf_counter()
        points[point]()
        return (time.perf_counter() - started) / duration

    with server(args_worker, f"{url}/health"), pool, http:
        # warm: a first run allocates, and the worker starts its four children
        in_process(one_model)
        list(pool.map(lambda _: in_process(four_model), range(4)))
        list(pool.map(lambda _: worker_call(), range(4)))
        for round_ in range(args.rounds):
            for at_once in ("1", "4"):
                # ceiling first in even rounds, worker first in odd ones: the machine's
                # drift within a round (a neighbour's load, clocks) falls on both sides
                order = ("ceiling", "worker") if round_ % 2 == 0 else ("worker", "ceiling")
                for side in order:
                    results[f"{side}-{at_once}"].append(timed(f"{side}-{at_once}"))
    medians = {k: float(np.median(v)) for k, v in results.items()}
    say(f"whisper-tiny-en, {n} x {samples.size / 16000:.2f} s of speech, {threads} "
        f"threads, median of {args.rounds} rounds, the ceiling on {args.ceiling_allocator}'s "
        f"allocator settings; real-time factor (lower is faster):")
    for at_once in ("1", "4"):
        ceiling, worker = medians[f"ceiling-{at_once}"], medians[f"worker-{at_once}"]
        pairs = zip(results[f"ceiling-{at_once}"], results[f"worker-{at_once}"], strict=True)
        rounds = ", ".join(f"x{c / w:.3f}" for c, w in pairs)
        say(f"  {at_once} at once: in process {ceiling:.4f}, worker {worker:.4f}, "
            f"worker at x{ceiling / worker:.3f} of the ceiling's speed (rounds: {rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
