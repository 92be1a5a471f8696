"""A whole Hyperdrive as the model repository (``modelRepository: "hyperdrive:<key>"``).

Each top-level folder of the drive that holds a model.json is a model. Its model.json
is read from the drive; its files are fetched into ``<store-dir>/models/<id>/`` on the
first load and checked as a per-model drive source is (``sources.py``). The drive's
key is what the operator trusts: where a model.json gives no sha256, the one publish
signed into the artifact's entry stands in for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from ..errors import InferenceError, first_line
from ..logs import get_logger
from ..p2p.drives import Drives
from .repository import ModelFiles, unknown_model
from .sources import FetchProgress, Sources
from .spec import MODEL_ID_RE, ModelSpec, check_model_id, parse_spec

log = get_logger("models.drive")

_LOCATION = re.compile(r"^hyperdrive:([0-9a-fA-F]{64})(?:@(\d+))?$")


def drive_location(text: str) -> tuple[str, int | None] | None:
    """``hyperdrive:<key>[@<version>]`` as (key, version); None for anything else."""
    match = _LOCATION.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), int(match.group(2)) if match.group(2) else None


class DriveRepository:
    def __init__(self, key: str, version: int | None, drives: Drives, sources: Sources
                 ) -> None:
        if drives.files_dir is None:
            raise InferenceError("ERR_MODEL_LOAD_FAILED", "a drive repository needs a store: "
                                 "start the worker with --store-dir")
        self.key, self.version = key, version
        self.drives, self.sources = drives, sources
        self.folder = drives.files_dir
        #: the last listing: model id -> its files (name -> signed sha256 or None)
        self._index: dict[str, dict[str, str | None]] = {}

    def has(self, model_id: str) -> bool:
        return check_model_id(model_id) in self._index

    async def list_ids(self) -> list[str]:
        listing = await self.drives.list(self.key, self.version, self.sources.wait_s)
        self._index = {
            str(f["name"]): {str(x["name"]): x.get("sha256") for x in f["files"]}
            for f in listing["folders"] if MODEL_ID_RE.match(str(f["name"]))}
        return sorted(self._index)

    async def describe(self, model_id: str) -> ModelSpec:
        if model_id not in self._index:
            await self.list_ids()
        files = self._index.get(model_id)
        if files is None:
            raise unknown_model(model_id)
        raw = await self.drives.read(self.key, self.version, f"/{model_id}/model.json",
                                     self.sources.wait_s)
        try:
            manifest: dict[str, Any] = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}': model.json in the drive is not JSON: "
                                 f"{first_line(exc)}") from exc
        if isinstance(manifest, dict):
            signed = files.get(str(manifest.get("file")))
            manifest.setdefault("sha256", signed)
            manifest["source"] = {"hyperdrive": self.key, "path": f"/{model_id}",
                                  "version": self.version}
        return parse_spec(model_id, manifest)

    def local_artifact(self, model_id: str, spec: ModelSpec) -> Path | None:
        artifact = ModelFiles.of(model_id, self.folder / model_id, spec.file).artifact
        return artifact if artifact.is_file() else None

    async def on_disk(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir()
                      if MODEL_ID_RE.match(p.name) and any(
                          not f.name.endswith(".part") for f in p.iterdir()))

    async def fetch(self, model_id: str, spec: ModelSpec, progress: FetchProgress
                    ) -> ModelFiles:
        folder = self.folder / check_model_id(model_id)
        folder.mkdir(parents=True, exist_ok=True)
        files = ModelFiles.of(model_id, folder, spec.file)
        await self.sources.ensure(model_id, spec, folder, progress)
        return files
