"""A GGUF file's metadata (its key-value header), read without loading the model.

What listings need (architecture, size label, quantisation) sits in the header, before
the tensors. Model files are untrusted: counts and lengths are bounded, any surprise
ends the read with what was found so far, and only scalar values are kept (arrays, such
as the tokenizer's vocabulary, are skipped, never held).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_MAGIC = b"GGUF"
_MAX_KV = 100_000
_MAX_STRING = 1 << 24
_MAX_ARRAY = 1 << 24
#: GGUF value types: fixed sizes of the scalar ones (struct formats)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

#: llama.cpp's file types (general.file_type) by name, as Ollama reports them
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
              15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


class _Truncated(Exception):
    pass


def _read(fh: BinaryIO, size: int) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise _Truncated
    return data


def _string(fh: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read(fh, 8))
    if length > _MAX_STRING:
        raise _Truncated
    return _read(fh, length).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, _read(fh, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", _read(fh, 12))
        if count > _MAX_ARRAY:
            raise _Truncated
        if item in _SCALARS:
            fh.seek(struct.calcsize(_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                _value(fh, item)
        return None
    raise _Truncated


def metadata(path: Path) -> dict[str, Any]:
    """The header's scalar values (``general.architecture``, ``general.file_type``...);
    an empty dict for a file that is not GGUF."""
    found: dict[str, Any] = {}
    try:
        with path.open("rb") as fh:
            if fh.read(4) != _MAGIC:
                return found
            _version, _tensors, count = struct.unpack("<IQQ", _read(fh, 20))
            for _ in range(min(count, _MAX_KV)):
                key = _string(fh)
                (kind,) = struct.unpack("<I", _read(fh, 4))
                value = _value(fh, kind)
                if value is not None:
                    found[key] = value
    except (OSError, _Truncated, struct.error):
        pass
    return found


def details(meta: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``details`` of a model from its header."""
    arch = meta.get("general.architecture", "")
    file_type = meta.get("general.file_type")
    return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch
            else None, "parameter_size": meta.get("general.size_label", ""),
            "quantization_level": FILE_TYPES.get(file_type, str(file_type or ""))
            if isinstance(file_type, int) else ""}
