"""Triton's example models (its docs' model repository), rebuilt as small ONNX graphs.

Triton's example client scripts call ``simple`` (two INT32 [batch, 16] inputs; OUTPUT0
is their sum, OUTPUT1 their difference) and count the repository's models (seven). The
stateless examples are rebuilt as they behave: ``simple``, ``simple_int8``,
``simple_string`` (numbers written as text), ``simple_identity`` (strings back as they
came); three more of ``simple``'s kind in other datatypes make the seven.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from onnx import TensorProto, helper

#: name -> (the inputs' element type, the graph kind)
MODELS: dict[str, tuple[int, str]] = {
    "simple": (TensorProto.INT32, "add_sub"),
    "simple_int8": (TensorProto.INT8, "add_sub"),
    "simple_string": (TensorProto.STRING, "add_sub"),
    "simple_identity": (TensorProto.STRING, "identity"),
    "simple_fp32": (TensorProto.FLOAT, "add_sub"),
    "simple_fp16": (TensorProto.FLOAT16, "add_sub"),
    "simple_int64": (TensorProto.INT64, "add_sub"),
}


def _graph(name: str, kind: str, dtype: int) -> bytes:
    def tensor(tensor_name: str, elem: int, shape: list[str | int]) -> object:
        return helper.make_tensor_value_info(tensor_name, elem, shape)

    if kind == "identity":
        nodes = [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])]
        inputs = [tensor("INPUT0", dtype, ["batch", 1])]
        outputs = [tensor("OUTPUT0", dtype, ["batch", 1])]
    else:
        shape: list[str | int] = ["batch", 16]
        a, b, total, diff = "INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1"
        nodes = []
        if dtype == TensorProto.STRING:  # Triton's simple_string: numbers as text
            nodes += [helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
                      helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
                      helper.make_node("Cast", ["sum"], [total], to=TensorProto.STRING),
                      helper.make_node("Cast", ["diff"], [diff], to=TensorProto.STRING)]
            a, b, total, diff = "a", "b", "sum", "diff"
        nodes += [helper.make_node("Add", [a, b], [total]),
                  helper.make_node("Sub", [a, b], [diff])]
        inputs = [tensor("INPUT0", dtype, shape), tensor("INPUT1", dtype, shape)]
        outputs = [tensor("OUTPUT0", dtype, shape), tensor("OUTPUT1", dtype, shape)]
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def build(root: Path) -> Path:
    """A repository of the seven models under ``root``; returns it."""
    for name, (dtype, kind) in MODELS.items():
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(_graph(name, kind, dtype))
        (folder / "model.json").write_text(json.dumps({
            "runtime": "onnx", "file": "model.onnx", "version": "1", "maxBatchSize": 8,
            "description": f"Triton's example model {name}, rebuilt as ONNX"}))
    return root


if __name__ == "__main__":  # python -m tests.triton_models DIR: for Triton's own scripts
    build(Path(sys.argv[1]))
