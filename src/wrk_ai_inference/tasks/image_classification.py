"""Task ``image-classification``: base64 PNG/JPEG in, decoded and normalised as
model.json says, classified as the ``classification`` task does."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InferenceError
from ..models.spec import ModelSpec, TensorSpec
from ..runtimes.base import Tensors
from .base import Limits, Task, bad
from .classification import classify

#: Pixels an input image may have: a small model resizes everything to a few thousand,
#: and a 15000x15000 PNG of a few hundred kilobytes would decode to 675 MB.
_MAX_PIXELS = 64_000_000


def _too_many_pixels(index: int, width: int, height: int) -> InferenceError:
    return bad(f"image {index} has too many pixels ({width}x{height}; at most "
                f"{_MAX_PIXELS:,})", limit=_MAX_PIXELS)


class ImageClassification(Task):
    """``image-classification``: base64 PNG/JPEG bytes in (one string, or a list), decoded
    with Pillow, converted to ``mode``, resized to ``size`` [height, width], scaled and
    normalised as model.json says, laid out NCHW; softmax and top-k with labels out."""

    name = "image-classification"
    costly = True

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
            raise bad(f"image {index} must be a base64 string")
        if len(text) * 3 // 4 > max_bytes:
            raise bad(f"image {index} is larger than maxStringBytes ({max_bytes})")
        try:
            raw = base64.b64decode(text, validate=True)
            with Image.open(io.BytesIO(raw)) as img:
                if img.width * img.height > _MAX_PIXELS:
                    raise _too_many_pixels(index, img.width, img.height)
                pixels = img.convert(self.mode).resize(self.size, Image.Resampling.BILINEAR)
                arr = np.asarray(pixels, dtype=np.float32)
        except Image.DecompressionBombError:
            # Pillow refuses images past twice its own pixel limit as it opens them
            raise bad(f"image {index} has too many pixels (at most {_MAX_PIXELS:,})",
                       limit=_MAX_PIXELS) from None
        except (binascii.Error, ValueError) as exc:
            raise bad(f"image {index} is not valid base64: {exc}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise bad(f"image {index} is not a PNG or JPEG image Pillow can read: {exc}"
                       ) from None
        chw = arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        result: np.ndarray = (chw * self.scale - self.mean) / self.std
        return result

    def inputs(self, model_inputs: list[TensorSpec], data: Any, limits: Limits) -> Tensors:
        max_items, max_string_bytes = limits.max_items, limits.max_string_bytes
        images = [data] if isinstance(data, str) else data
        if not isinstance(images, list) or not images:
            raise bad("inputData must be a base64 image or a non-empty list of them")
        if len(images) > max_items:
            raise bad(f"at most {max_items} images per request")
        batch = np.stack([self._image(i, t, max_string_bytes) for i, t in enumerate(images)])
        return {model_inputs[0].name: batch.astype(np.float32)}

    def outputs(self, outputs: Tensors, feeds: Tensors, top_k: int,
                wanted: list[str] | None = None) -> dict[str, Any]:
        return classify(outputs, self.spec, self.labels, top_k)
