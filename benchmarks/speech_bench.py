"""``make bench-speech``: transcription speed, the worker against faster-whisper in process.

One recording (the fox sentence said again and again, 60 s of speech) through
``whisper-tiny-en``; the real-time factor (processing seconds per second of audio, lower is
faster) of:
  ceiling    faster-whisper called in this process on the same folder and settings (int8,
             beam 5, its temperature fallback, threads = usable cores): one transcription,
             then four at once (four threads on one model with four CTranslate2 workers,
             the best it offers)
  worker     the worker's seed API: one request, then four at once
interleaved over rounds, medians printed with the ratio ceiling / worker (1.0: as fast as
the library itself). Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench import free_port, server  # noqa: E402
from wrk_ai_inference.tasks.speech_to_text import decode  # noqa: E402

MODEL = ROOT / "examples" / "models" / "whisper-tiny-en"


def recording(seconds: float) -> tuple[bytes, np.ndarray]:
    once = decode((ROOT / "tests" / "fixtures" / "audio" / "quick_brown_fox.wav").read_bytes(),
                  600)
    samples = np.tile(once, int(seconds * 16000 / once.size) + 1)
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setnchannels(1)
        target.setsampwidth(2)
        target.setframerate(16000)
        target.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return out.getvalue(), samples


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    wav, samples = recording(args.seconds)
    duration = samples.size / 16000
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
            started = time.perf_counter()
            in_process(one_model)
            results["ceiling-1"].append((time.perf_counter() - started) / duration)
            started = time.perf_counter()
            worker_call()
            results["worker-1"].append((time.perf_counter() - started) / duration)
            started = time.perf_counter()
            list(pool.map(lambda _: in_process(four_model), range(4)))
            results["ceiling-4"].append((time.perf_counter() - started) / (4 * duration))
            started = time.perf_counter()
            list(pool.map(lambda _: worker_call(), range(4)))
            results["worker-4"].append((time.perf_counter() - started) / (4 * duration))
    medians = {k: float(np.median(v)) for k, v in results.items()}
    say(f"whisper-tiny-en, {duration:.1f} s of speech, {threads} threads, median of "
        f"{args.rounds} rounds; real-time factor (lower is faster):")
    for n in ("1", "4"):
        ceiling, worker = medians[f"ceiling-{n}"], medians[f"worker-{n}"]
        say(f"  {n} at once: in process {ceiling:.4f}, worker {worker:.4f}, "
            f"worker at x{ceiling / worker:.3f} of the ceiling's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
