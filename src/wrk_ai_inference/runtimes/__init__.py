"""Runtimes turn a model artifact into something that runs tensors.

Add one by implementing ``runtimes.base.Runtime`` and registering it in
``get_runtime``; everything else (validation, batching, deadlines, capacity,
history) is shared and comes for free.
"""

from __future__ import annotations

from ..errors import InferenceError
from .base import Runtime

#: model.json "runtime" value -> the config's supportedModelTypes name.
RUNTIME_TYPES = {"onnx": "onnx", "onnxruntime": "onnx", "torch": "pytorch",
                 "pytorch": "pytorch", "torchscript": "pytorch", "llama": "llama",
                 "llama.cpp": "llama", "gguf": "llama"}


def get_runtime(name: str, supported: list[str], intra_threads: int, inter_threads: int,
                gpu_enabled: bool = False) -> Runtime:
    kind = RUNTIME_TYPES.get(name)
    if kind is None or kind not in supported:
        raise InferenceError(
            "ERR_MODEL_LOAD_FAILED",
            f"runtime {name!r} is not supported by this worker "
            f"(supported: {', '.join(k for k in RUNTIME_TYPES if RUNTIME_TYPES[k] in supported)})",
        )
    if kind == "llama":
        from .llama import LlamaRuntime

        return LlamaRuntime()
    if kind == "pytorch":
        from .torch import TorchRuntime

        return TorchRuntime(gpu_enabled=gpu_enabled, intra_threads=intra_threads)
    from .onnx import OnnxRuntime

    return OnnxRuntime(intra_threads=intra_threads, inter_threads=inter_threads)
