"""Where model directories come from. A local folder today; Hyperdrive later.

A backend only answers "which ids exist" and "where is this id on disk"; it
never loads anything, so a P2P backend can fetch files into a cache folder and
hand back the same kind of path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import InferenceError
from .spec import MODEL_ID_RE, check_model_id

MANIFEST = "model.json"


def unknown_model(model_id: str) -> InferenceError:
    """ERR_MODEL_NOT_FOUND with Triton's wording, which tools built on tritonclient match;
    never the repository's path, which is the machine's business."""
    return InferenceError("ERR_MODEL_NOT_FOUND",
                          f"Request for unknown model: '{model_id}' is not found in the model "
                          "repository", {"modelId": model_id})


class ModelRepository(Protocol):
    def list_ids(self) -> list[str]: ...

    def model_dir(self, model_id: str) -> Path: ...


class LocalRepository:
    """``<root>/<modelId>/model.json`` on the local file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if MODEL_ID_RE.match(p.name) and (p / MANIFEST).is_file()
        )

    def model_dir(self, model_id: str) -> Path:
        """The model's folder, refusing anything that resolves outside the root."""
        check_model_id(model_id)
        candidate = (self.root / model_id).resolve()
        if candidate.parent != self.root or not (candidate / MANIFEST).is_file():
            raise unknown_model(model_id)
        return candidate

    def artifact_path(self, model_id: str, file: str) -> Path:
        base = self.model_dir(model_id)
        path = (base / file).resolve()
        if not path.is_relative_to(base):
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED", f"model '{model_id}': file {file!r} leaves its folder"
            )
        return path
