"""The request window on disk, so a worker that was killed still knows, once restarted,
which ``requestId``s it ran and what it answered.

Without it a killed worker comes back with an empty window, says ``unknown`` for a
call it finished but could not deliver, and the client runs that call a second time
elsewhere. Each call appends a start line and an end line (the answer, or the error)
to a JSON-lines file with one ``write`` each: a process killed with SIGKILL loses
nothing already written, as the kernel holds it (a host that loses power may lose
the last lines; no fsync, which would cost a disk flush per request). The file
rotates after ``limit`` lines into one previous generation, so disk use stays about
two windows' worth and rotation never stalls the loop.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..logs import get_logger

log = get_logger("request_journal")

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass
class Recovered:
    """One id from an earlier process: its model, and its end (None: it died running)."""

    model_id: str
    ended_wall: float | None = None
    result: Any = None
    error: tuple[str, str] | None = None


class RequestJournal:
    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".1")
        self.limit = max(1, limit)
        self._fd: int | None = None
        self._lines = 0

    def recover(self) -> dict[str, Recovered]:
        """What the files say: each id's last start and its end, if it has one."""
        calls: dict[str, Recovered] = {}
        for entry in self.entries():
            self._replay(entry, calls)
        return calls

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every line of both generations, oldest first: ``{"id", "model"}`` a start,
        ``{"id", "t", "ok" | "err"}`` an end, ``{"id", "forget"}``; a torn line (the
        last one a killed process began) is skipped."""
        for file in (self.previous, self.path):
            with contextlib.suppress(FileNotFoundError):
                for line in file.read_bytes().splitlines():
                    try:
                        entry = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        entry = None
                    if isinstance(entry, dict):
                        yield entry
                    else:
                        log.warning("skipped a torn request journal line")

    @staticmethod
    def _replay(entry: dict[str, Any], calls: dict[str, Recovered]) -> None:
        try:
            request_id = entry["id"]
            if "model" in entry:
                calls[request_id] = Recovered(entry["model"])
                return
            call = calls.get(request_id)
            if call is None:
                return
            if entry.get("forget"):
                del calls[request_id]
                return
            call.ended_wall = float(entry["t"])
            call.result = entry.get("ok")
            err = entry.get("err")
            call.error = (str(err[0]), str(err[1])) if err else None
        except (KeyError, TypeError, ValueError, IndexError):
            log.warning("skipped a torn request journal line")

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lines = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def started(self, request_id: str, model_id: str) -> None:
        self._write({"id": request_id, "model": model_id})

    def ended(self, request_id: str, result: Any = None,
              error: tuple[str, str] | None = None) -> None:
        entry: dict[str, Any] = {"id": request_id, "t": round(time.time(), 3)}
        if error is None:
            entry["ok"] = result
        else:
            entry["err"] = list(error)
        self._write(entry)

    def forgotten(self, request_id: str) -> None:
        self._write({"id": request_id, "forget": True})

    def _write(self, entry: dict[str, Any]) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, orjson.dumps(entry, option=_OPTS) + b"\n")
        except (OSError, TypeError) as exc:  # a full disk must not fail the request
            log.error("request journal write failed", extra={"error": str(exc)})
            return
        self._lines += 1
        if self._lines >= 2 * self.limit:  # a start and an end line per call
            self._rotate()

    def _rotate(self) -> None:
        self.close()
        try:
            os.replace(self.path, self.previous)
        except OSError as exc:
            log.error("request journal rotation failed", extra={"error": str(exc)})
        self.open()
