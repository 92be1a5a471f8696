"""Task ``classification``: a tensor model whose output is scores per class, answered
as probabilities, top-k ``{label, score}`` per row and the top score per row."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InferenceError
from ..models.spec import ModelSpec
from ..runtimes.base import Tensors
from .tensor import TensorTask


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax on a float64 copy, in place."""
    out: np.ndarray = scores - scores.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    return bool(scores.min() >= 0 and np.abs(scores.sum(axis=1) - 1.0).max() <= 1e-3)


#: Outputs up to this many scores are classified in plain Python: on the request path
#: each numpy call costs microseconds, more than the arithmetic on a few classes
#: (docs/performance.md).
_SMALL_SCORES = 64


def _small_rows(scores: np.ndarray, softmax: bool | None) -> list[list[float]] | None:
    """The numpy path's probabilities in plain Python, or None where numpy must decide
    (NaN or infinite scores). As there, one request's rows are all softmaxed or none."""
    rows: list[list[float]] = scores.tolist()
    totals = [sum(row) for row in rows]
    if any(t != t or t in (math.inf, -math.inf) for t in totals):
        return None
    if softmax is False or (softmax is None and min(min(row) for row in rows) >= 0
                            and max(abs(t - 1.0) for t in totals) <= 1e-3):
        return rows
    out = []
    for row in rows:
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        norm = sum(exps)
        out.append([e / norm for e in exps])
    return out


def classify(outputs: Tensors, spec: ModelSpec, labels: list[str] | None, top_k: int
             ) -> dict[str, Any]:
    """Probabilities, top-k ``{label, score}`` per row, and the top score per row."""
    name = spec.postprocess.get("output") or next(iter(outputs))
    if name not in outputs:
        raise InferenceError("ERR_INFERENCE_FAILED",
                             f"postprocess.output {name!r} is not an output of the model")
    scores = np.asarray(outputs[name], dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[np.newaxis]
    scores = scores.reshape(scores.shape[0], -1)
    softmax = spec.postprocess.get("softmax")
    names = labels or []
    k = min(top_k, scores.shape[1])
    rows = _small_rows(scores, softmax) if scores.size <= _SMALL_SCORES else None
    if rows is not None:
        # sorted() is stable, as argsort(kind="stable") below: ties keep the lower index
        order = [sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]
                 for row in rows]
        top_scores = [[row[i] for i in indices] for row, indices in zip(rows, order,
                                                                          strict=True)]
        probabilities = np.array(rows, dtype=np.float32)
    else:
        if softmax is True or (softmax is None and not _looks_like_probabilities(scores)):
            scores = _softmax(scores)
        sorted_idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        # tolist() once: Python floats and ints without a numpy scalar per element
        top_scores = scores[np.arange(scores.shape[0])[:, np.newaxis], sorted_idx].tolist()
        order = sorted_idx.tolist()
        probabilities = scores.astype(np.float32)
    predictions = [
        [{"label": names[i] if i < len(names) else str(i), "score": score}
         for i, score in zip(indices, row, strict=True)]
        for indices, row in zip(order, top_scores, strict=True)
    ]
    return {
        "predictions": predictions,
        "confidence": [row[0] for row in top_scores],
        "probabilities": probabilities,
    }




class ClassificationTask(TensorTask):
    name = "classification"

    def outputs(self, outputs: Tensors, feeds: Tensors, top_k: int,
                wanted: list[str] | None = None) -> dict[str, Any]:
        result = super().outputs(outputs, feeds, top_k, wanted)
        result.update(classify(outputs, self.spec, self.labels, top_k))
        return result
