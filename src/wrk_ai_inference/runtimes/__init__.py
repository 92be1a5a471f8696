"""Runtimes turn a model artifact into something that runs tensors.

Add one by implementing ``runtimes.base.Runtime`` and registering it in
``get_runtime``; everything else (validation, batching, deadlines, capacity,
history) is shared and comes for free.
"""

from __future__ import annotations

import os

from ..errors import InferenceError
from .base import Runtime

#: model.json "runtime" value -> the config's supportedModelTypes name.
RUNTIME_TYPES = {"onnx": "onnx", "onnxruntime": "onnx", "torch": "pytorch",
                 "pytorch": "pytorch", "torchscript": "pytorch", "llama": "llama",
                 "llama.cpp": "llama", "gguf": "llama", "whisper": "whisper",
                 "faster-whisper": "whisper"}


#: How many rounds an idle OpenMP thread spins before it sleeps (libgomp's default: 300,000).
OPENMP_SPIN_ROUNDS = "1000"


def spin_briefly_at_barriers() -> None:
    """llama.cpp and torch compute on OpenMP threads that meet at a barrier several times a
    layer. With libgomp's default, a thread waiting there spins for milliseconds; when
    anything else on the host takes a core (another build, another service), its partner
    is descheduled and every barrier costs a scheduler tick, so decoding slows by tens of
    times. A short spin costs nothing measurable on a quiet host. libgomp reads this once,
    when it loads, so it is set before the first runtime that uses it is imported; a value
    the user set (GOMP_SPINCOUNT or OMP_WAIT_POLICY) is kept."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_ROUNDS


def get_runtime(name: str, supported: list[str], intra_threads: int, inter_threads: int,
                gpu_enabled: bool = False) -> Runtime:
    kind = RUNTIME_TYPES.get(name)
    if kind is None or kind not in supported:
        raise InferenceError(
            "ERR_MODEL_LOAD_FAILED",
            f"runtime {name!r} is not supported by this worker "
            f"(supported: {', '.join(k for k in RUNTIME_TYPES if RUNTIME_TYPES[k] in supported)})",
        )
    spin_briefly_at_barriers()
    if kind == "llama":
        from .llama import LlamaRuntime

        return LlamaRuntime()
    if kind == "whisper":
        from .whisper import WhisperRuntime

        return WhisperRuntime()
    if kind == "pytorch":
        from .torch import TorchRuntime

        return TorchRuntime(gpu_enabled=gpu_enabled, intra_threads=intra_threads)
    from .onnx import OnnxRuntime

    return OnnxRuntime(intra_threads=intra_threads, inter_threads=inter_threads)
