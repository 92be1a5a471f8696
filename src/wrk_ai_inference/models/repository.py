"""Where models come from: the repository protocol and its local-folder backend.

The manager asks a repository which ids exist, what a model declares (its
model.json) and for the model's files on local disk, ready to load; it never builds a
path itself. The local backend keeps one folder per model; a model.json may name a
``source`` (a Hyperdrive folder, or a URL), and the files are then fetched into that
folder and verified on the first load (``sources.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import InferenceError
from .sources import FetchProgress, Sources, sha256_of
from .spec import MODEL_ID_RE, ModelSpec, check_model_id, read_spec

MANIFEST = "model.json"


def unknown_model(model_id: str) -> InferenceError:
    """ERR_MODEL_NOT_FOUND with Triton's wording, which tools built on tritonclient match;
    never the repository's path, which is the machine's business."""
    return InferenceError("ERR_MODEL_NOT_FOUND",
                          f"Request for unknown model: '{model_id}' is not found in the model "
                          "repository", {"modelId": model_id})


@dataclass(frozen=True)
class ModelFiles:
    """A model's files on local disk, fetched and verified: what a runtime loads."""

    model_id: str
    folder: Path
    artifact: Path

    @classmethod
    def of(cls, model_id: str, folder: Path, file: str) -> ModelFiles:
        """The files of a model whose artifact is ``file`` in ``folder`` (checked to stay
        inside it)."""
        return cls(model_id, folder, cls(model_id, folder, folder).path(file))

    def path(self, name: str) -> Path:
        """A file of the model's folder, refusing names that leave it."""
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder):
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{self.model_id}': file {name!r} leaves its folder")
        return path


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


class ModelRepository(Protocol):
    def has(self, model_id: str) -> bool:
        """Whether the id exists; cheap (it runs for requests to models not loaded)."""
        ...

    async def list_ids(self) -> list[str]: ...

    async def describe(self, model_id: str) -> ModelSpec:
        """The model's model.json; ERR_MODEL_NOT_FOUND or ERR_MODEL_LOAD_FAILED."""
        ...

    async def fetch(self, model_id: str, spec: ModelSpec, progress: FetchProgress
                    ) -> ModelFiles:
        """The model's files, ready to load: fetched (reporting to ``progress``) and
        checked against ``spec.sha256`` where it is given."""
        ...

    async def on_disk(self) -> list[str]:
        """Ids whose artifact is on this machine already (a load needs no fetch)."""
        ...

    def local_artifact(self, model_id: str, spec: ModelSpec) -> Path | None:
        """The model's artifact where it is on this machine already, else None."""
        ...


class LocalRepository:
    """``<root>/<modelId>/model.json`` on the local file system."""

    def __init__(self, root: str | Path, sources: Sources | None = None) -> None:
        self.root = Path(root).resolve()
        self.sources = sources or Sources(None)

    def has(self, model_id: str) -> bool:
        try:
            self._folder(model_id)
        except InferenceError:
            return False
        return True

    async def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if MODEL_ID_RE.match(p.name) and (p / MANIFEST).is_file()
        )

    async def describe(self, model_id: str) -> ModelSpec:
        return read_spec(model_id, self._folder(model_id) / MANIFEST)

    async def fetch(self, model_id: str, spec: ModelSpec, progress: FetchProgress
                    ) -> ModelFiles:
        files = ModelFiles.of(model_id, self._folder(model_id), spec.file)
        artifact = files.artifact
        if spec.source is not None:
            await self.sources.ensure(model_id, spec, files.folder, progress)
        elif not artifact.is_file():
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}': artifact {spec.file} is missing")
        elif spec.sha256 is not None:
            actual = await asyncio.to_thread(sha256_of, artifact)
            if actual != spec.sha256.lower():
                raise InferenceError(
                    "ERR_MODEL_LOAD_FAILED",
                    f"model '{model_id}': checksum mismatch for {spec.file}: model.json says "
                    f"sha256 {spec.sha256}, the file has {actual}")
        return files

    async def on_disk(self) -> list[str]:
        found = []
        for model_id in await self.list_ids():
            try:
                spec = await self.describe(model_id)
            except InferenceError:
                continue
            if (self.root / model_id / spec.file).is_file():
                found.append(model_id)
        return found

    def local_artifact(self, model_id: str, spec: ModelSpec) -> Path | None:
        return _existing(ModelFiles.of(model_id, self._folder(model_id), spec.file).artifact)

    def _folder(self, model_id: str) -> Path:
        """The model's folder, refusing anything that resolves outside the root."""
        check_model_id(model_id)
        candidate = (self.root / model_id).resolve()
        if candidate.parent != self.root or not (candidate / MANIFEST).is_file():
            raise unknown_model(model_id)
        return candidate
