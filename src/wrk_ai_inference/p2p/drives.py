"""Hyperdrive model drives through the sidecar: publish, fetch, seed, forget.

The sidecar moves the bytes; what is trusted is decided above (the model source
checks the artifact's sha256 before anything is seeded). Sidecar errors carry a code
of their own (``ERR_NO_PEERS: …``); a fetch that finds no peer or no file becomes
ERR_MODEL_LOAD_FAILED with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InferenceError
from .sidecar import Sidecar

#: (bytesDone, bytesTotal)
FetchProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Fetched:
    """What a fetch wrote: ``<dest>/<name>.part`` for each name in ``files``."""

    version: int
    files: list[str]
    bytes_total: int
    bytes_resumed: int  # already in part files before this fetch
    bytes_network: int  # received from peers during this fetch


def _answer_within(wait_s: float, waits: int) -> float:
    """How long to wait for a command whose sidecar side makes ``waits`` network waits of
    at most ``wait_s`` each: it answers with its own reason before this passes."""
    return wait_s * waits + 10.0


class Drives:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        store = sidecar.store_dir
        #: where models of a drive repository keep their files: beside the Corestore
        self.files_dir = store.parent / "models" if store is not None else None

    async def _command(self, name: str, fields: dict[str, Any], timeout: float,
                       progress: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, Any]:
        return (await self._call(name, fields, timeout, progress))[0]

    async def _call(self, name: str, fields: dict[str, Any], timeout: float,
                    progress: Callable[[dict[str, Any]], None] | None = None
                    ) -> tuple[dict[str, Any], bytes]:
        await self.sidecar.start()
        return await self.sidecar.command(name, fields, timeout=timeout, progress=progress)

    async def publish(self, folders: list[Path], block_size: int | None = None
                      ) -> dict[str, Any]:
        """Put each folder under /<its name> of this store's drive and seed it: ``{"key",
        "version", "models", "files": [{"path", "size", "blocks"}]}``. ``block_size``: the
        bytes per block of files written now (the sidecar's default when None)."""
        dirs = [{"name": f.name, "path": str(f.resolve())} for f in folders]
        fields: dict[str, Any] = {"dirs": dirs}
        if block_size is not None:
            fields["blockSize"] = block_size
        return await self._command("drive.publish", fields, timeout=3600)

    async def fetch(self, key: str, folder: str, version: int | None, dest: Path,
                    progress: FetchProgress, wait_s: float, skip: tuple[str, ...] = (),
                    expect: dict[str, str] | None = None) -> Fetched:
        """Stream the files under ``folder`` of drive ``key`` (but those in ``skip``) into
        part files in ``dest``, resuming what part files hold. ``expect`` (name: sha256)
        refuses a file whose signed entry says otherwise before fetching it. ``wait_s``
        bounds each wait for a peer or a block."""
        def report(frame: dict[str, Any]) -> None:
            progress(int(frame.get("bytesDone", 0)), int(frame.get("bytesTotal", 0)))

        try:
            result = await self._command(
                "drive.fetch", {"key": key, "folder": folder, "version": version,
                                "skip": list(skip), "expect": expect or {},
                                "dest": str(dest),
                                "timeout": int(wait_s * 1000)},
                timeout=24 * 3600, progress=report)
        except InferenceError as exc:
            raise self._failed(key, f"fetching {folder}", exc) from exc
        return Fetched(int(result["version"]), [str(f["name"]) for f in result["files"]],
                       int(result["bytesTotal"]), int(result["bytesResumed"]),
                       int(result["bytesNetwork"]))

    async def list(self, key: str, version: int | None, wait_s: float) -> dict[str, Any]:
        """The drive's model folders: ``{"version", "folders": [{"name", "files": [{"name",
        "size", "sha256"}]}]}`` (sha256 as publish signed it, or None)."""
        try:
            return await self._command("drive.list", {"key": key, "version": version,
                                                      "timeout": int(wait_s * 1000)},
                                       timeout=_answer_within(wait_s, waits=4))
        except InferenceError as exc:
            raise self._failed(key, "listing", exc) from exc

    async def read(self, key: str, version: int | None, path: str, wait_s: float) -> bytes:
        """A small file of the drive (1 MiB at most)."""
        try:
            _, body = await self._call("drive.read", {"key": key, "version": version,
                                                      "path": path,
                                                      "timeout": int(wait_s * 1000)},
                                       timeout=_answer_within(wait_s, waits=4))
        except InferenceError as exc:
            raise self._failed(key, f"read {path}", exc) from exc
        return body

    @staticmethod
    def _failed(key: str, what: str, exc: InferenceError) -> InferenceError:
        text = str(exc.details.get("text") or exc.message)
        return InferenceError("ERR_MODEL_LOAD_FAILED",
                              f"{what} of drive {key[:12]}… failed: {text}",
                              {"reason": exc.details.get("reason")})

    async def seed(self, key: str, wait_s: float) -> None:
        """Serve drive ``key``; ``wait_s`` bounds each wait for a peer or the DHT."""
        try:
            await self._command("drive.seed", {"key": key, "timeout": int(wait_s * 1000)},
                                timeout=_answer_within(wait_s, waits=2))
        except InferenceError as exc:
            raise self._failed(key, "seeding", exc) from exc

    async def forget(self, key: str, folder: str, wait_s: float, keep_serving: bool) -> None:
        """Delete drive ``key``'s blobs under ``folder`` (bytes that failed verification)
        and, unless ``keep_serving``, stop serving the drive."""
        try:
            await self._command("drive.forget", {"key": key, "folder": folder,
                                                 "timeout": int(wait_s * 1000),
                                                 "keepServing": keep_serving},
                                timeout=_answer_within(wait_s, waits=1))
        except InferenceError as exc:
            raise self._failed(key, f"forgetting {folder}", exc) from exc

    async def stats(self, key: str) -> dict[str, int]:
        result = await self._command("drive.stats", {"key": key}, timeout=10)
        return {"uploaded": int(result["uploaded"]), "downloaded": int(result["downloaded"])}
