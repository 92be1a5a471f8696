"""GPU check for the torch runtime: a MiniLM-sized encoder (6 layers, hidden 384, 12 heads,
sequence 128, fp16 on CUDA) served by the worker's torch runtime at batch 1 and under
concurrent load with dynamic batching, beside plain PyTorch on the same model in the same
run. Prints one JSON object with sequences/s and the ratios.

    PYTHONPATH=src python benchmarks/gpu_torch.py            # on a machine with a GPU
    PYTHONPATH=src python benchmarks/gpu_torch.py --device cpu --seconds 2 --small  # dry run

It drives InferenceWorker in-process (no HTTP), so what it compares is the core's
runtime path (validation, admission, batching, thread hop, copies) against the raw model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wrk_ai_inference.config import Settings
from wrk_ai_inference.worker import InferenceWorker

SEQ, VOCAB = 128, 30522


class Encoder(torch.nn.Module):
    def __init__(self, hidden: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, hidden)
        self.position = torch.nn.Parameter(torch.randn(1, SEQ, hidden) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, batch_first=True,
                                                 dropout=0.0)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(input_ids) + self.position)
        return hidden.mean(dim=1)


def build(folder: Path, device: str, small: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    hidden, layers, heads = (64, 2, 4) if small else (384, 6, 12)
    model = Encoder(hidden, layers, heads).eval().to(device)
    if device == "cuda":
        model = model.half()
    example = torch.randint(0, VOCAB, (2, SEQ), device=device)
    with torch.inference_mode():
        traced = torch.jit.trace(model, example)
    out = folder / "minilm"
    out.mkdir(parents=True)
    traced.save(str(out / "model.pt"))
    dtype = "FP16" if device == "cuda" else "FP32"
    (out / "model.json").write_text(json.dumps({
        "runtime": "pytorch", "file": "model.pt", "task": "tensor",
        "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, SEQ]}],
        "outputs": [{"name": "embedding", "datatype": dtype, "shape": [-1, hidden]}],
        "maxBatchSize": 256, "batchDelayMs": 2}))
    return model


def plain(model: torch.nn.Module, device: str, batch: int, seconds: float) -> float:
    """Sequences/s of the bare module, copies from and to host memory included."""
    ids = np.random.default_rng(batch).integers(0, VOCAB, (batch, SEQ), dtype=np.int64)
    with torch.inference_mode():
        for _ in range(3):
            model(torch.from_numpy(ids).to(device)).cpu()
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(torch.from_numpy(ids).to(device)).cpu().numpy()
            done += batch
    return done / (time.perf_counter() - started)


async def served(folder: Path, device: str, batching: bool, concurrency: int,
                 seconds: float, rows: int = 1) -> float:
    worker = InferenceWorker(Settings(  # type: ignore[call-arg]
        modelRepository=str(folder), preload=["minilm"], gpuEnabled=device == "cuda",
        maxConcurrentInferences=4096, maxQueuedInferences=8192, dynamicBatching=batching,
        healthCheckInterval=60000, inlineRunMicros=0))
    await worker.start()
    await worker.wait_ready()
    rng = np.random.default_rng(1)
    pool = [rng.integers(0, VOCAB, (rows, SEQ), dtype=np.int64) for _ in range(64)]
    done = 0

    async def client(i: int, stop: float) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await worker.run_tensors("minilm", {"input_ids": pool[(i + done) % 64]})
            done += rows

    try:
        await asyncio.gather(*(client(i, time.perf_counter() + 1.0) for i in range(concurrency)))
        done = 0
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + seconds) for i in range(concurrency)))
        return done / (time.perf_counter() - started)
    finally:
        await worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="a tiny encoder, for dry runs")
    parser.add_argument("--rows", type=int, default=16,
                        help="sequences per request in the extra multi-row run")
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("no GPU here: run with --device cpu for a dry run\n")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), device, args.small)
        r: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda"
                             else "cpu", "torch": torch.__version__}
        r["plain_batch1"] = plain(model, device, 1, args.seconds)
        r["plain_batch256"] = plain(model, device, 256, args.seconds)
        r["worker_batch1"] = asyncio.run(served(Path(tmp), device, False, 1, args.seconds))
        off_key, on_key = (f"worker_batching_off_c{args.concurrency}",
                           f"worker_batching_on_c{args.concurrency}")
        r[off_key] = asyncio.run(served(Path(tmp), device, False, args.concurrency,
                                        args.seconds))
        r[on_key] = asyncio.run(served(Path(tmp), device, True, args.concurrency, args.seconds))
        rows_key = f"worker_batching_on_{args.rows}_rows_per_request_c64"
        r[rows_key] = asyncio.run(served(Path(tmp), device, True, 64, args.seconds, args.rows))
    on = r[on_key]
    r["ratio_worker_vs_plain_batch1"] = r["worker_batch1"] / r["plain_batch1"]
    r["ratio_worker_batching_vs_plain_batch256"] = on / r["plain_batch256"]
    r["ratio_batching_on_vs_off"] = on / r[off_key]
    r["ratio_multi_row_requests_vs_plain_batch256"] = r[rows_key] / r["plain_batch256"]
    sys.stdout.write(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                 for k, v in r.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
