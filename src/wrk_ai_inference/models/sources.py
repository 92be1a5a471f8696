"""Fetching a model's files from where its model.json says they are.

Both kinds of source write ``<name>.part`` beside each final name and resume from what
a part file already holds. Nothing is renamed into place before the artifact's sha256
matches model.json, and only then is a drive seeded. The sha256 is computed while the
part file grows, on a thread beside the fetch, so that checking it adds little after the
last byte lands. A mismatch discards the bytes
(the part files, and the drive's blobs in the sidecar's store), so a tampered artifact
is never loaded, never served and never seeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..errors import InferenceError, first_line
from ..logs import get_logger
from ..p2p.drives import Drives
from .spec import DriveSource, ModelSpec, UrlSource

log = get_logger("models.fetch")

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class GrowingDigest:
    """The sha256 of a part file that is being appended to: each ``catch_up`` hashes what
    was written since the last. Sources only append, so the bytes below the file's size
    are final; a file found shorter than what was hashed (restarted) is hashed again from
    its start. The caller still recomputes the whole file before calling bytes bad."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.digest = hashlib.sha256()
        self._lock = threading.Lock()

    def catch_up(self) -> None:
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                return
            if size < self.offset:
                self.offset, self.digest = 0, hashlib.sha256()
            if size == self.offset:
                return
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                while self.offset < size:
                    block = fh.read(min(_CHUNK * 8, size - self.offset))
                    if not block:
                        break
                    self.digest.update(block)
                    self.offset += len(block)

    def hexdigest(self) -> str:
        self.catch_up()
        with self._lock:
            return self.digest.hexdigest()


@contextlib.asynccontextmanager
async def hashing_beside(digest: GrowingDigest, every_s: float = 0.05
                         ) -> AsyncIterator[GrowingDigest]:
    """Keeps ``digest`` caught up with its file on a helper thread while the body runs."""
    async def follow() -> None:
        while True:
            await asyncio.to_thread(digest.catch_up)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(follow())
    try:
        yield digest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class FetchProgress:
    """A fetch under way, as ``GET /api/models/{id}`` shows it; it logs bytes, rate and
    ETA every few seconds, and draws a bar where stderr is a terminal (``make run``)."""

    model_id: str
    bytes_done: int = 0
    bytes_total: int = 0
    started: float = field(default_factory=time.monotonic)
    _logged: float = 0.0
    _first_done: int | None = None  # what was already there when bytes began to move

    def update(self, done: int, total: int) -> None:
        if self._first_done is None:
            self._first_done = done
        self.bytes_done, self.bytes_total = done, total
        now = time.monotonic()
        finished = bool(total) and done >= total
        if now - self._logged >= 2.0 or finished:
            self._logged = now
            log.info("fetching model", extra={"modelId": self.model_id, **self.view()})
        if sys.stderr.isatty():
            self._draw(finished)

    def _draw(self, finished: bool) -> None:
        share = self.bytes_done / self.bytes_total if self.bytes_total else 0.0
        view = self.view()
        eta = f"ETA {view['etaS']:.0f} s" if view["etaS"] is not None else ""
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r\x1b[K{self.model_id} [{bar:<30}] {share:4.0%} "
                         f"{self.bytes_done / 1e6:.1f}/{self.bytes_total / 1e6:.1f} MB "
                         f"{view['mbPerS']} MB/s {eta}" + ("\n" if finished else ""))
        sys.stderr.flush()

    def rate(self) -> float:
        """Bytes per second moved in this run (resumed bytes do not count)."""
        elapsed = time.monotonic() - self.started
        moved = self.bytes_done - (self._first_done or 0)
        return moved / elapsed if elapsed > 0 else 0.0

    def view(self) -> dict[str, float | int | None]:
        rate = self.rate()
        left = self.bytes_total - self.bytes_done
        return {"bytesDone": self.bytes_done, "bytesTotal": self.bytes_total,
                "mbPerS": round(rate / 1e6, 2),
                "etaS": round(left / rate, 1) if rate > 0 and left > 0 else None}


def _folder(path: str) -> str:
    return "/" + path.strip("/")


class Sources:
    """Fetches into a model's own folder. ``drives`` is None where the worker has no
    sidecar (no ``--bootstrap``): a drive source then fails with a message saying so."""

    def __init__(self, drives: Drives | None, wait_s: float = 30.0) -> None:
        self.drives = drives
        self.wait_s = wait_s
        #: drive key -> its folders that verified models came from: their blobs are never
        #: forgotten, and the drive is never stopped, whatever another model.json pins
        self._verified: dict[str, set[str]] = {}

    async def ensure(self, model_id: str, spec: ModelSpec, folder: Path,
                     progress: FetchProgress) -> None:
        """Make ``folder`` hold the model's verified files, fetching what is missing."""
        source, expected = spec.source, spec.sha256
        assert source is not None and expected is not None  # model.json's validation
        artifact = folder / spec.file
        if artifact.is_file():
            if await asyncio.to_thread(sha256_of, artifact) == expected.lower():
                await self._seed(source)
                return
            log.warning("model file on disk does not match its sha256; fetching it again",
                        extra={"modelId": model_id, "file": spec.file})
            artifact.unlink()
        part = folder / f"{spec.file}.part"
        async with hashing_beside(GrowingDigest(part)) as digest:
            names = await self._fetch(model_id, spec, source, folder, progress)
        actual = await asyncio.to_thread(digest.hexdigest)
        if actual != expected.lower():  # what was hashed beside the fetch, or the file now?
            actual = await asyncio.to_thread(sha256_of, part)
        if actual != expected.lower():
            for name in names:
                (folder / f"{name}.part").unlink(missing_ok=True)
            await self._forget(source)
            raise InferenceError(
                "ERR_MODEL_LOAD_FAILED",
                f"model '{model_id}': the fetched {spec.file} has sha256 {actual}, model.json "
                f"says {expected}; the bytes were discarded and are not served")
        for name in names:
            (folder / f"{name}.part").replace(folder / name)
        await self._seed(source)
        log.info("model fetched and verified", extra={"modelId": model_id,
                                                      "bytes": progress.bytes_total})

    async def _fetch(self, model_id: str, spec: ModelSpec, source: DriveSource | UrlSource,
                     folder: Path, progress: FetchProgress) -> list[str]:
        """Fetch into part files; returns the names fetched (the artifact among them)."""
        if isinstance(source, UrlSource):
            await self._http(source.url, folder / f"{spec.file}.part", progress)
            return [spec.file]
        drives = self._drives(model_id)
        assert spec.sha256 is not None
        try:
            fetched = await drives.fetch(source.hyperdrive.lower(), source.path,
                                         source.version, folder, progress.update, self.wait_s,
                                         skip=("model.json",), expect={spec.file: spec.sha256})
        except InferenceError as exc:
            if exc.details.get("reason") != "ERR_SHA256_MISMATCH":
                raise
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}': {exc.message}; model.json says "
                                 f"{spec.sha256}: refused before fetching it") from exc
        log.info("drive fetch done", extra={
            "modelId": model_id, "driveVersion": fetched.version,
            "bytesTotal": fetched.bytes_total, "bytesResumed": fetched.bytes_resumed,
            "bytesNetwork": fetched.bytes_network})
        if spec.file not in fetched.files:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}': the drive's {source.path} has no "
                                 f"{spec.file} (it has {', '.join(fetched.files)})")
        return fetched.files

    def _drives(self, model_id: str) -> Drives:
        if self.drives is None:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"model '{model_id}' comes from a Hyperdrive, and this worker "
                                 "has no DHT: start it with --bootstrap HOST:PORT and "
                                 "--store-dir DIR")
        return self.drives

    async def _seed(self, source: DriveSource | UrlSource) -> None:
        """Serve the drive a verified model came from, and remember that it did."""
        if isinstance(source, DriveSource) and self.drives is not None:
            key = source.hyperdrive.lower()
            await self.drives.seed(key, self.wait_s)
            self._verified.setdefault(key, set()).add(_folder(source.path))

    async def _forget(self, source: DriveSource | UrlSource) -> None:
        """Drop the drive's blobs of a fetch that failed verification. Where a verified
        model came from the same folder, those blobs are its bytes (the same entries),
        so nothing is dropped; where it came from another folder of the drive, the drive
        goes on being served."""
        if not isinstance(source, DriveSource) or self.drives is None:
            return
        key, folder = source.hyperdrive.lower(), _folder(source.path)
        verified = self._verified.get(key, set())
        if folder in verified:
            log.warning("bytes that failed verification belong to a verified model's "
                        "folder; they stay served", extra={"drive": key[:12], "folder": folder})
            return
        await self.drives.forget(key, folder, self.wait_s, keep_serving=bool(verified))

    async def _http(self, url: str, part: Path, progress: FetchProgress) -> None:
        """GET ``url`` into ``part``, asking only for the bytes it lacks."""
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        timeout = httpx.Timeout(self.wait_s)
        try:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client, \
                    client.stream("GET", url, headers=headers) as reply:
                if reply.status_code == 416 and have:  # the part is longer than the file
                    part.unlink()
                    return await self._http(url, part, progress)
                if reply.status_code == 206:
                    match = _CONTENT_RANGE.match(reply.headers.get("content-range", ""))
                    if match is None or int(match.group(1)) != have:
                        raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                             f"GET {url}: a range reply that does not start "
                                             f"at byte {have}")
                    total = int(match.group(3)) if match.group(3) != "*" else 0
                    mode = "ab"
                elif reply.status_code == 200:
                    have, mode = 0, "wb"  # no ranges: start again
                    total = int(reply.headers.get("content-length") or 0)
                else:
                    raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                         f"GET {url} answered HTTP {reply.status_code}")
                done = have
                progress.update(done, total)
                with part.open(mode) as fh:
                    async for chunk in reply.aiter_bytes(_CHUNK):
                        fh.write(chunk)
                        done += len(chunk)
                        progress.update(done, total)
        except httpx.HTTPError as exc:
            raise InferenceError("ERR_MODEL_LOAD_FAILED",
                                 f"GET {url} failed: {first_line(exc) or type(exc).__name__}"
                                 ) from exc
