"""PyTorch models (TorchScript ``.pt`` or an exported program ``.pt2``), on CUDA when
``gpuEnabled`` and a GPU is there, on the CPU otherwise.

Torch is an optional extra (``pip install 'wrk-ai-inference[torch]'``): the worker
starts without it and names the extra when a torch model is asked for. A torch run
cannot be stopped mid-way, so ``cancellable`` is False: a deadline still answers the
client on time, and the run keeps its slot until it ends (``wrk_inference_overrunning``).
TorchScript does not describe its tensors reliably, so model.json must declare
``inputs`` and ``outputs``; they are passed positionally in that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InferenceError, first_line
from ..models.spec import ModelSpec, TensorSpec
from .base import ModelSession, RunHandle, Tensors, import_extra


class TorchSession(ModelSession):
    def __init__(self, module: Any, torch: Any, device: str, inputs: list[TensorSpec],
                 outputs: list[TensorSpec]) -> None:
        self._module = module
        self._torch = torch
        self.device = device
        self.inputs = inputs
        self.outputs = outputs

    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(
                self.device, non_blocking=True) for t in self.inputs]
            result = self._module(*args)
            if isinstance(result, dict):
                values = [result[t.name] for t in self.outputs]
            elif isinstance(result, list | tuple):
                values = list(result)
            else:
                values = [result]
            if len(values) != len(self.outputs):
                raise InferenceError("ERR_INFERENCE_FAILED",
                                     f"the model returned {len(values)} tensors, model.json "
                                     f"declares {len(self.outputs)} outputs")
            return {t.name: v.detach().cpu().numpy()
                    for t, v in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        del self._module
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


class TorchRuntime:
    name = "pytorch"

    def __init__(self, gpu_enabled: bool, intra_threads: int = 0) -> None:
        self.gpu_enabled = gpu_enabled
        self.intra_threads = intra_threads

    def load(self, artifact: Path, spec: ModelSpec, model: str = "?") -> TorchSession:
        torch = import_extra("torch", model, "torch models need PyTorch", "torch")
        if not spec.inputs or not spec.outputs:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model}': torch models must declare inputs and "
                                 "outputs in model.json")
        if self.intra_threads:
            torch.set_num_threads(self.intra_threads)
        device = "cuda" if self.gpu_enabled and torch.cuda.is_available() else "cpu"
        try:
            if artifact.suffix == ".pt2":
                module = torch.export.load(str(artifact)).module()
            else:
                module = torch.jit.load(str(artifact), map_location=device)
            module = module.to(device)
            if hasattr(module, "eval"):
                module.eval()
        except Exception as exc:  # torch raises many unrelated types for bad files
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model}': torch could not load {artifact.name}: "
                                 f"{first_line(exc)}"
                                 ) from exc
        return TorchSession(module, torch, device, list(spec.inputs), list(spec.outputs))
