"""``make bench-speech``: transcription speed, the worker against faster-whisper in process.

One recording (``quick_brown_fox.wav``, 2.9 s of speech: one window, nothing said twice,
so Whisper's temperature fallback, which samples, never runs and each transcription does
the same work) through ``whisper-tiny-en``, ``--count`` times; the real-time factor
(processing seconds per second of audio, lower is faster) of:
  ceiling    faster-whisper called in this process on the same folder and settings (int8,
             beam 5, threads = usable cores): one transcription after another, then four
             at once (four threads on one model with four CTranslate2 workers)
  worker     the worker's seed API: one request after another, then four at once
interleaved over rounds, medians printed with the ratio ceiling / worker (1.0: as fast as
the library itself). Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import free_port, server  # noqa: E402
from wrk_ai_inference.tasks.speech_to_text import decode  # noqa: E402

MODEL = ROOT / "examples" / "models" / "whisper-tiny-en"


def recording() -> tuple[bytes, np.ndarray]:
    data = (ROOT / "tests" / "fixtures" / "audio" / "quick_brown_fox.wav").read_bytes()
    return data, decode(data, 600)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=12, help="transcriptions per point")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    wav, samples = recording()
    duration = samples.size / 16000 * args.count
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

    def worker_call() -> None:
        reply = httpx.post(f"{url}/api/inference/whisper-tiny-en", json=body, timeout=600)
        assert reply.status_code == 200, reply.text

    with server(args_worker, f"{url}/health"), ThreadPoolExecutor(4) as pool:
        worker_call()  # warm: the first run allocates
        in_process(one_model)
        in_process(four_model)
        for _ in range(args.rounds):
            n = args.count
            started = time.perf_counter()
            for _ in range(n):
                in_process(one_model)
            results["ceiling-1"].append((time.perf_counter() - started) / duration)
            started = time.perf_counter()
            for _ in range(n):
                worker_call()
            results["worker-1"].append((time.perf_counter() - started) / duration)
            started = time.perf_counter()
            list(pool.map(lambda _: in_process(four_model), range(n)))
            results["ceiling-4"].append((time.perf_counter() - started) / duration)
            started = time.perf_counter()
            list(pool.map(lambda _: worker_call(), range(n)))
            results["worker-4"].append((time.perf_counter() - started) / duration)
    medians = {k: float(np.median(v)) for k, v in results.items()}
    say(f"whisper-tiny-en, {args.count} x {samples.size / 16000:.2f} s of speech, {threads} "
        f"threads, median of {args.rounds} rounds; real-time factor (lower is faster):")
    for n in ("1", "4"):
        ceiling, worker = medians[f"ceiling-{n}"], medians[f"worker-{n}"]
        say(f"  {n} at once: in process {ceiling:.4f}, worker {worker:.4f}, "
            f"worker at x{ceiling / worker:.3f} of the ceiling's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
