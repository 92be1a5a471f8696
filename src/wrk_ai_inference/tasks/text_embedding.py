"""Task ``text-embedding``: strings in, the model's own tokenizer, mean pooling over the
attention mask, L2 normalisation; one vector per string out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InferenceError
from ..models.spec import ModelSpec, TensorSpec
from ..runtimes.base import Tensors
from .base import Limits, Task, bad


class TextEmbedding(Task):
    name = "text-embedding"
    costly = True

    def __init__(self, spec: ModelSpec, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        name = spec.preprocess.get("tokenizer", "tokenizer.json")
        path = (model_dir / str(name)).resolve()
        if not path.is_relative_to(model_dir.resolve()) or not path.is_file():
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"text-embedding needs its tokenizer file {name!r} in the "
                                 "model folder")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(int(spec.preprocess.get("maxLength", 256)))
        self.tokenizer.enable_padding()
        self.normalize = bool(spec.postprocess.get("normalize", True))

    def inputs(self, model_inputs: list[TensorSpec], data: Any, limits: Limits) -> Tensors:
        max_items, max_string_bytes = limits.max_items, limits.max_string_bytes
        texts = [data] if isinstance(data, str) else data
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) for t in texts)):
            raise bad("inputData must be a string or a non-empty list of strings")
        if len(texts) > max_items:
            raise bad(f"at most {max_items} strings per request")
        for i, text in enumerate(texts):
            if len(text.encode("utf-8")) > max_string_bytes:
                raise bad(f"string {i} is longer than maxStringBytes ({max_string_bytes})")
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        available = {
            "input_ids": ids,
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        missing = [t.name for t in model_inputs if t.name not in available]
        if missing:
            raise InferenceError("ERR_INFERENCE_FAILED",
                                 f"text-embedding cannot feed the model's inputs {missing}")
        return {t.name: available[t.name] for t in model_inputs}

    def outputs(self, outputs: Tensors, feeds: Tensors, top_k: int,
                wanted: list[str] | None = None) -> dict[str, Any]:
        hidden = np.asarray(next(iter(outputs.values())), dtype=np.float32)
        mask = feeds["attention_mask"][..., np.newaxis].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if self.normalize:
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return {"embeddings": pooled.astype(np.float32), "dimensions": int(pooled.shape[1])}


