"""Task pipelines: JSON in -> typed tensors, tensors out -> the answer a client wants.

Preprocessing is strict on purpose: a float where an integer is expected, a
ragged list, a wrong shape or a missing input is refused with a message that
says what the model expects, because a silently truncated input gives a wrong
answer that nobody notices.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..datatypes import numpy_dtype
from ..errors import InferenceError
from ..json_tensors import JsonNumbers
from ..models.spec import ModelSpec, TensorSpec
from ..runtimes.base import Tensors

_NUMERIC_KINDS = {"b", "i", "u", "f"}


def _bad(message: str, **details: Any) -> InferenceError:
    return InferenceError("ERR_INVALID_INPUT", message, details)


def describe(spec: TensorSpec) -> str:
    return f"'{spec.name}' ({spec.datatype}, shape {spec.shape})"


def _strings(spec: TensorSpec, value: Any, max_bytes: int) -> np.ndarray:
    """A BYTES input: strings (or UTF-8 bytes) in, an object array of str out."""
    arr = value if isinstance(value, np.ndarray) else np.array(value, dtype=object)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    if arr.dtype.kind != "O":
        raise _bad(f"input {describe(spec)} must hold strings", input=spec.name)
    flat = arr.reshape(-1)
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                flat[i] = item.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(f"input {describe(spec)} element {i} is not UTF-8",
                           input=spec.name) from None
        elif not isinstance(item, str):
            raise _bad(f"input {describe(spec)} must hold only strings; element {i} is "
                       f"{type(item).__name__}", input=spec.name)
        if len(flat[i]) * 4 > max_bytes and len(flat[i].encode("utf-8")) > max_bytes:
            raise _bad(f"input {describe(spec)} element {i} is longer than maxStringBytes "
                       f"({max_bytes} bytes)", input=spec.name, limit=max_bytes)
    return arr


def _to_array(spec: TensorSpec, value: Any, max_string_bytes: int) -> np.ndarray:
    """The input as a typed array of the shape the model takes (a batch axis added to a
    lone sample), its shape checked once, before any conversion of numbers."""
    if spec.datatype == "BYTES":
        return _check_shape(spec, _strings(spec, value, max_string_bytes))
    if isinstance(value, np.ndarray):  # already typed (binary v2 tensors): no copy
        if value.dtype != numpy_dtype(spec.datatype):
            raise _bad(f"input {describe(spec)} got {value.dtype} data", input=spec.name)
        return _check_shape(spec, value)
    if isinstance(value, dict | str | bytes) or value is None:
        raise _bad(f"input {describe(spec)} must be a number or a nested list of numbers, "
                   f"got {type(value).__name__}", input=spec.name)
    if isinstance(value, JsonNumbers):  # decoded from JSON as np.asarray would have
        raw = value.array
    else:
        try:
            raw = np.asarray(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _bad(f"input {describe(spec)} is not a regular nested list of numbers "
                       f"(ragged or mixed rows): {str(exc)[:120]}", input=spec.name) from exc
    raw = _check_shape(spec, raw)  # before any conversion: a wrong shape costs nothing
    if raw.dtype.kind not in _NUMERIC_KINDS:
        raise _bad(f"input {describe(spec)} must hold only numbers (found {raw.dtype.kind!r}-kind "
                   "values such as strings, nulls or objects)", input=spec.name)
    target = numpy_dtype(spec.datatype)
    if target.kind in "iu":
        if raw.dtype.kind == "f" and not (np.all(np.isfinite(raw))
                                          and np.all(raw == np.round(raw))):
            raise _bad(f"input {describe(spec)} needs whole numbers; got fractions",
                       input=spec.name)
        if raw.size and raw.dtype.kind != "b":
            info = np.iinfo(target)  # type: ignore[type-var]
            lo, hi = raw.min(), raw.max()
            if lo < info.min or hi > info.max:
                raise _bad(f"input {describe(spec)} values must lie in [{info.min}, {info.max}]",
                           input=spec.name)
    elif target.kind == "b" and raw.dtype.kind != "b" and raw.size and not np.all(
        (raw == 0) | (raw == 1)
    ):
        raise _bad(f"input {describe(spec)} is boolean: use true/false or 0/1", input=spec.name)
    elif target.kind == "f" and raw.dtype.kind == "f" and target.itemsize < raw.dtype.itemsize:
        limit = float(np.finfo(target).max)  # type: ignore[type-var]
        # one reduction instead of min and max: if the sum of squares stays within
        # limit**2, no value overflows (only a NaN or a huge sum gets the exact check)
        if not raw.size or np.vdot(raw, raw) <= limit * limit:
            return np.ascontiguousarray(raw, dtype=target)
        with np.errstate(over="ignore"):  # overflow is detected just below
            arr = np.ascontiguousarray(raw, dtype=target)
        if not np.isfinite(arr).all() and np.any(np.isinf(arr) & np.isfinite(raw)):
            raise _bad(f"input {describe(spec)} has values too large for {spec.datatype}",
                       input=spec.name)
        return arr
    return np.ascontiguousarray(raw, dtype=target)


def _check_shape(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    expected = spec.shape
    if arr.ndim == len(expected) - 1 and spec.has_batch_dim:
        arr = arr[np.newaxis]  # one sample sent without its batch axis
    if arr.ndim != len(expected) or any(
        e != -1 and e != got for e, got in zip(expected, arr.shape, strict=True)
    ):
        raise _bad(f"input {describe(spec)} got shape {list(arr.shape)}; -1 marks a free "
                   "dimension", input=spec.name, expected=expected, got=list(arr.shape))
    if arr.size == 0:
        raise _bad(f"input {describe(spec)} is empty", input=spec.name)
    return arr


def tensor_inputs(inputs: list[TensorSpec], input_data: Any, max_elements: int,
                  max_string_bytes: int = 1 << 20) -> Tensors:
    """``{name: nested list}``, or a bare nested list for a one-input model, to typed arrays."""
    names = [t.name for t in inputs]
    if isinstance(input_data, dict):
        missing = [n for n in names if n not in input_data]
        unknown = [k for k in input_data if k not in names]
        if missing or unknown:
            raise _bad(f"the model's inputs are {names}; missing {missing}, unknown {unknown[:10]}",
                       expected=names)
        values = input_data
    elif isinstance(input_data, list | JsonNumbers) and len(inputs) == 1:
        values = {names[0]: input_data}
    else:
        shown = ("a bare list" if isinstance(input_data, list | JsonNumbers)
                 else type(input_data).__name__)
        raise _bad(f"inputData must be an object {{name: nested list}} with the inputs {names}"
                   f" (a bare list only works for one-input models); got {shown}",
                   expected=names)
    feeds: Tensors = {}
    total = 0
    for spec in inputs:
        arr = _to_array(spec, values[spec.name], max_string_bytes)
        total += arr.size
        if total > max_elements:
            raise _bad(f"the inputs hold more than maxTensorElements ({max_elements}) elements",
                       limit=max_elements)
        feeds[spec.name] = arr
    batch = {a.shape[0] for s, a in zip(inputs, feeds.values(), strict=True) if s.has_batch_dim}
    if len(batch) > 1:
        raise _bad(f"inputs disagree on the batch size: {sorted(batch)}")
    return feeds


def jsonable(arr: np.ndarray) -> Any:
    """Arrays orjson can write directly stay arrays; strings become (nested) lists."""
    if arr.dtype.kind in "OSU":
        flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in arr.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist()
    return np.ascontiguousarray(arr)


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


class TextEmbedding:
    """``text-embedding``: strings in, the model's own tokenizer, mean pooling over the
    attention mask, L2 normalisation; one vector per string out."""

    def __init__(self, tokenizer_file: Path, max_length: int, normalize: bool) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding()
        self.normalize = normalize

    def inputs(self, model_inputs: list[TensorSpec], data: Any, max_items: int,
               max_string_bytes: int) -> Tensors:
        texts = [data] if isinstance(data, str) else data
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) for t in texts)):
            raise _bad("inputData must be a string or a non-empty list of strings")
        if len(texts) > max_items:
            raise _bad(f"at most {max_items} strings per request")
        for i, text in enumerate(texts):
            if len(text.encode("utf-8")) > max_string_bytes:
                raise _bad(f"string {i} is longer than maxStringBytes ({max_string_bytes})")
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

    def outputs(self, outputs: Tensors, feeds: Tensors, top_k: int = 5) -> dict[str, Any]:
        hidden = np.asarray(next(iter(outputs.values())), dtype=np.float32)
        mask = feeds["attention_mask"][..., np.newaxis].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if self.normalize:
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return {"embeddings": pooled.astype(np.float32), "dimensions": int(pooled.shape[1])}


#: Pixels an input image may have: a small model resizes everything to a few thousand,
#: and a 15000x15000 PNG of a few hundred kilobytes would decode to 675 MB.
_MAX_PIXELS = 64_000_000


def _too_many_pixels(index: int, width: int, height: int) -> InferenceError:
    return _bad(f"image {index} has too many pixels ({width}x{height}; at most "
                f"{_MAX_PIXELS:,})", limit=_MAX_PIXELS)


class ImageClassification:
    """``image-classification``: base64 PNG/JPEG bytes in (one string, or a list), decoded
    with Pillow, converted to ``mode``, resized to ``size`` [height, width], scaled and
    normalised as model.json says, laid out NCHW; softmax and top-k with labels out."""

    def __init__(self, spec: ModelSpec, labels: list[str] | None) -> None:
        pre = spec.preprocess
        self.mode = str(pre.get("mode", "RGB"))
        height, width = pre.get("size", [224, 224])
        self.size = (int(width), int(height))
        channels = 1 if self.mode == "L" else 3
        self.scale = float(pre.get("scale", 1 / 255))
        self.mean = np.asarray(pre.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(pre.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)
        self.spec = spec
        self.labels = labels

    def _image(self, index: int, text: Any, max_bytes: int) -> np.ndarray:
        import base64
        import binascii
        import io

        from PIL import Image, UnidentifiedImageError

        if not isinstance(text, str):
            raise _bad(f"image {index} must be a base64 string")
        if len(text) * 3 // 4 > max_bytes:
            raise _bad(f"image {index} is larger than maxStringBytes ({max_bytes})")
        try:
            raw = base64.b64decode(text, validate=True)
            with Image.open(io.BytesIO(raw)) as img:
                if img.width * img.height > _MAX_PIXELS:
                    raise _too_many_pixels(index, img.width, img.height)
                pixels = img.convert(self.mode).resize(self.size, Image.Resampling.BILINEAR)
                arr = np.asarray(pixels, dtype=np.float32)
        except Image.DecompressionBombError:
            # Pillow refuses images past twice its own pixel limit as it opens them
            raise _bad(f"image {index} has too many pixels (at most {_MAX_PIXELS:,})",
                       limit=_MAX_PIXELS) from None
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"image {index} is not valid base64: {exc}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise _bad(f"image {index} is not a PNG or JPEG image Pillow can read: {exc}"
                       ) from None
        chw = arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        result: np.ndarray = (chw * self.scale - self.mean) / self.std
        return result

    def inputs(self, model_inputs: list[TensorSpec], data: Any, max_items: int,
               max_string_bytes: int) -> Tensors:
        images = [data] if isinstance(data, str) else data
        if not isinstance(images, list) or not images:
            raise _bad("inputData must be a base64 image or a non-empty list of them")
        if len(images) > max_items:
            raise _bad(f"at most {max_items} images per request")
        batch = np.stack([self._image(i, t, max_string_bytes) for i, t in enumerate(images)])
        return {model_inputs[0].name: batch.astype(np.float32)}

    def outputs(self, outputs: Tensors, feeds: Tensors, top_k: int = 5) -> dict[str, Any]:
        return classify(outputs, self.spec, self.labels, top_k)


def load_pipeline(spec: ModelSpec, model_dir: Path, labels: list[str] | None = None
                  ) -> TextEmbedding | ImageClassification | None:
    """The task's pre/postprocessing resources, loaded once with the model."""
    if spec.task == "text-embedding":
        name = spec.preprocess.get("tokenizer", "tokenizer.json")
        path = (model_dir / str(name)).resolve()
        if not path.is_relative_to(model_dir) or not path.is_file():
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"text-embedding needs its tokenizer file {name!r} in the "
                                 "model folder")
        return TextEmbedding(path, int(spec.preprocess.get("maxLength", 256)),
                             bool(spec.postprocess.get("normalize", True)))
    if spec.task == "image-classification":
        return ImageClassification(spec, labels)
    return None
