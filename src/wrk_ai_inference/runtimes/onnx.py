"""onnxruntime sessions, with runs that a deadline can really stop.

Each run gets its own ``RunOptions``; cancelling sets ``terminate`` so that
onnxruntime abandons the graph at the next node (also inside Loop bodies)
instead of burning a core for a client that has gone. Thread spinning is off so
that an idle worker uses no CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..datatypes import ONNX_TO_V2
from ..errors import InferenceError, first_line
from ..models.spec import ModelSpec, TensorSpec
from .base import ModelSession, RunHandle, Tensors


class OnnxRunHandle(RunHandle):
    cancellable = True

    def __init__(self) -> None:
        super().__init__()
        self.options = ort.RunOptions()
        self.options.log_severity_level = 4  # a terminated run is expected, not an error

    def cancel(self) -> None:
        super().cancel()
        self.options.terminate = True


def _shape(raw: Any) -> list[int]:
    if raw is None:
        return []
    return [d if isinstance(d, int) and d >= 0 else -1 for d in raw]


def _signature(args: list[Any], kind: str, model: str) -> list[TensorSpec]:
    specs = []
    for arg in args:
        datatype = ONNX_TO_V2.get(arg.type)
        if datatype is None:
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model}': {kind} {arg.name!r} has type {arg.type}, which is not a tensor "
                "type this worker serves",
            )
        specs.append(TensorSpec(name=arg.name, datatype=datatype, shape=_shape(arg.shape)))
    return specs


def _merge(declared: list[TensorSpec] | None, graph: list[TensorSpec], kind: str, model: str
           ) -> list[TensorSpec]:
    """Use model.json's declaration when given, but only if the graph agrees with it."""
    if declared is None:
        return graph
    by_name = {t.name: t for t in graph}
    for t in declared:
        real = by_name.get(t.name)
        if real is None:
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model}': model.json declares {kind} {t.name!r} but the graph has "
                f"{sorted(by_name)}",
            )
        if real.datatype != t.datatype or len(real.shape) != len(t.shape):
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model}': model.json declares {kind} {t.name!r} as {t.datatype}{t.shape}"
                f" but the graph has {real.datatype}{real.shape}",
            )
    if kind == "input" and len(declared) != len(graph):
        raise InferenceError(
            "ERR_MODEL_LOAD_FAILED",
            f"model '{model}': model.json declares {len(declared)} inputs, the graph needs "
            f"{len(graph)}",
        )
    return declared


class OnnxSession(ModelSession):
    def __init__(self, session: ort.InferenceSession, spec: ModelSpec, model: str) -> None:
        self._session = session
        self.inputs = _merge(spec.inputs, _signature(session.get_inputs(), "input", model),
                             "input", model)
        self.outputs = _merge(spec.outputs, _signature(session.get_outputs(), "output", model),
                              "output", model)
        self._output_names = [o.name for o in self.outputs]

    def new_run(self) -> RunHandle:
        return OnnxRunHandle()

    def run(self, feeds: Tensors, handle: RunHandle) -> Tensors:
        options = handle.options if isinstance(handle, OnnxRunHandle) else None
        results = self._session.run(self._output_names, feeds, options)
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        del self._session


class OnnxRuntime:
    name = "onnx"

    def __init__(self, intra_threads: int = 0, inter_threads: int = 1) -> None:
        self.intra_threads = intra_threads or (os.cpu_count() or 1)
        self.inter_threads = inter_threads

    def load(self, artifact: Path, spec: ModelSpec, model: str = "?") -> OnnxSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_threads
        options.inter_op_num_threads = self.inter_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.add_session_config_entry("session.dynamic_block_base", "4")
        try:
            session = ort.InferenceSession(
                str(artifact), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types here
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model}': onnxruntime could not load {artifact.name}: "
                f"{first_line(exc)}",
            ) from exc
        return OnnxSession(session, spec, model)
