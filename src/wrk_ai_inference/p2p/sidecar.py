"""The Node sidecar as a supervised child process: the worker's one Holepunch process.

Python owns it: it starts ``node sidecar.js``, sends the keys and settings, sends
commands (``rpc.*``, ``dht.*``, ``drive.*``, see the script's header) and answers the
RPC calls it forwards. If the sidecar dies, every command waiting on it fails at once
with ERR_RPC_UNAVAILABLE, and it is started again with the same seeds (so the same
public keys); the owner's ``on_restart`` puts back what it had set up (the RPC server,
announced topics, seeded drives).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import framing
from ..errors import InferenceError
from ..logs import get_logger

log = get_logger("p2p.sidecar")

NODE_DIR = Path(__file__).parent / "node"
#: The files the sidecar needs beside its node_modules (shipped as package data).
_NODE_FILES = ("sidecar.js", "frames.js", "dht.js", "rpc.js", "drive.js", "testnet.js",
               "package.json", "package-lock.json")

#: (method, body, peer) -> the reply's body
CallHandler = Callable[[str, bytes, str], Awaitable[bytes]]
Progress = Callable[[dict[str, Any]], None]


def _installed(folder: Path) -> bool:
    return (folder / "node_modules" / "hyperdht").is_dir()


def node_cache_dir() -> Path:
    """Where an installed package keeps the sidecar's npm packages: a user-writable
    cache, one folder per version of the sidecar's files (so an upgrade reinstalls)."""
    digest = hashlib.sha256()
    for name in _NODE_FILES:
        digest.update((NODE_DIR / name).read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wrk-ai-inference" / f"node-{digest.hexdigest()[:16]}"


def node_dir() -> Path:
    """The folder to run the sidecar from, with its npm packages installed.

    A checkout has them beside the scripts (``make setup`` runs ``npm ci`` there). An
    installed package does not: on first use the scripts are copied into
    ``node_cache_dir()`` and ``npm ci`` installs the exact versions of the committed
    package-lock.json there, once.
    """
    if _installed(NODE_DIR):
        return NODE_DIR
    cache = node_cache_dir()
    if _installed(cache):
        return cache
    npm = shutil.which("npm")
    command = f"mkdir -p {cache} && cp {' '.join(str(NODE_DIR / n) for n in _NODE_FILES)} " \
              f"{cache} && cd {cache} && npm ci --omit=dev"
    if npm is None:
        raise InferenceError("ERR_RPC_UNAVAILABLE", "rack mode needs Node.js 20 and npm on "
                             f"PATH to install the sidecar's packages; or run: {command}")
    log.info("installing the Node sidecar's packages (first use)",
             extra={"folder": str(cache), "command": "npm ci --omit=dev"})
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=_made(cache.parent)))
    try:
        for name in _NODE_FILES:
            shutil.copy2(NODE_DIR / name, staging / name)
        done = subprocess.run([npm, "ci", "--omit=dev", "--no-audit", "--no-fund",
                               "--loglevel=error"], cwd=staging, capture_output=True,
                              text=True, timeout=600, check=False)
        if done.returncode != 0 or not _installed(staging):
            raise InferenceError("ERR_RPC_UNAVAILABLE", "npm ci failed for the Node sidecar "
                                 f"({done.stderr.strip()[-300:]}); run: {command}")
        with contextlib.suppress(OSError):  # another process may have finished first
            staging.rename(cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _installed(cache):
        raise InferenceError("ERR_RPC_UNAVAILABLE", f"the Node sidecar's packages are not in "
                             f"{cache}; run: {command}")
    return cache


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise InferenceError("ERR_RPC_UNAVAILABLE", "rack mode needs Node.js 20 on PATH")
    return node


class Sidecar:
    """One sidecar process at a time, restarted when it dies. The owner sets ``on_call``
    (incoming RPC calls), ``on_call_error`` (the reply when ``on_call`` raises) and
    ``on_refused`` before ``start``."""

    def __init__(self, init: dict[str, Any]) -> None:
        self._init = init
        self.on_call: CallHandler | None = None
        self.on_call_error: Callable[[Exception], bytes] = lambda exc: b""
        self.on_refused: Callable[[str], None] | None = None
        self._on_restart: list[Callable[[], Awaitable[None]]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._progress: dict[int, Progress] = {}
        self._next_id = 1
        self._generation = 0
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._starting: asyncio.Task[dict[str, Any]] | None = None
        self.info: dict[str, Any] = {}
        self.restarts = 0
        self.lost_calls = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def started(self) -> bool:
        return self._supervisor is not None

    @property
    def store_dir(self) -> Path | None:
        """The Corestore folder, where the sidecar keeps drives (None: no drives)."""
        store = self._init.get("storeDir")
        return Path(store) if store else None

    def after_restart(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` each time the sidecar has been started again."""
        self._on_restart.append(step)

    async def start(self, timeout: float = 30) -> dict[str, Any]:
        """Start the process (once; concurrent callers share the start)."""
        if self._starting is None:
            self._starting = asyncio.create_task(self._first_start(timeout))
        try:
            return await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done():
                self._starting = None  # a failed start may be tried again
            raise

    async def _first_start(self, timeout: float) -> dict[str, Any]:
        self.info = await self._spawn(timeout)
        self._supervisor = asyncio.create_task(self._supervise())
        return self.info

    async def _spawn(self, timeout: float) -> dict[str, Any]:
        folder = await asyncio.to_thread(node_dir)
        self._proc = await asyncio.create_subprocess_exec(
            node_binary(), str(folder / "sidecar.js"), cwd=folder, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None, limit=framing.MAX_FRAME,
        )
        self._generation += 1
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(self._proc, self._generation))
        self._write({"t": "init", **self._init})
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self._proc.kill()
            raise InferenceError("ERR_RPC_UNAVAILABLE",
                                 f"the Node sidecar did not start within {timeout}s") from None

    def _write(self, header: dict[str, Any], body: bytes = b"") -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise InferenceError("ERR_RPC_UNAVAILABLE", "the Node sidecar is not running")
        proc.stdin.write(framing.encode(header, body))

    async def _read(self, proc: asyncio.subprocess.Process, generation: int) -> None:
        assert proc.stdout is not None
        try:
            while True:
                prefix = await proc.stdout.readexactly(4)
                frame = await proc.stdout.readexactly(framing.read_length(prefix))
                header, body = framing.decode(frame)
                self._dispatch(header, body, generation)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("bad frame from the Node sidecar")
            proc.kill()

    def _dispatch(self, header: dict[str, Any], body: bytes, generation: int) -> None:
        kind = header.get("t")
        if kind == "call":
            task = asyncio.create_task(self._answer(header, body, generation))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif kind == "result":
            future = self._pending.pop(header.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result((header, body))
        elif kind == "progress":
            report = self._progress.get(header.get("id", -1))
            if report is not None:
                report(header)
        elif kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(header)
        elif kind == "refused":
            log.warning("peer refused by the firewall", extra={"peer": header.get("peer")})
            if self.on_refused is not None:
                self.on_refused(str(header.get("peer")))
        elif kind == "log":
            level = {"error": 40, "warning": 30}.get(str(header.pop("level", "")), 20)
            msg = str(header.pop("msg", "sidecar"))
            header.pop("t", None)
            log.log(level, msg, extra={"sidecar": header})

    async def _answer(self, header: dict[str, Any], body: bytes, generation: int) -> None:
        """Exactly one reply per call, whatever the handler does: a caller must never be
        left to its own time-out."""
        assert self.on_call is not None
        try:
            reply = await self.on_call(str(header.get("method")), body,
                                       str(header.get("peer")))
        except Exception as exc:
            log.exception("RPC call handler failed", extra={"method": header.get("method")})
            reply = self.on_call_error(exc)
        if generation != self._generation:
            self.lost_calls += 1  # the sidecar that asked has died; its client saw the error
            return
        with contextlib.suppress(InferenceError):
            self._write({"t": "rpc.reply", "id": header["id"]}, reply)

    async def command(self, name: str, fields: dict[str, Any] | None = None,
                      body: bytes = b"", timeout: float = 30,
                      progress: Progress | None = None) -> tuple[dict[str, Any], bytes]:
        """Send a command and wait for its result frame; raise on failure. ``progress``
        gets the command's progress frames."""
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = \
            asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if progress is not None:
            self._progress[request_id] = progress
        try:
            self._write({**(fields or {}), "t": name, "id": request_id}, body)
            result, payload = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise InferenceError("ERR_RPC_UNAVAILABLE",
                                 f"sidecar command {name} got no answer in {timeout}s"
                                 ) from None
        finally:
            self._pending.pop(request_id, None)
            self._progress.pop(request_id, None)
        if not result.get("ok"):
            # reason: the failure's code where it has one (CHANNEL_CLOSED, NOT_CONNECTED,
            # ERR_SHA256_MISMATCH), else its text; callers branch on it, never on text
            code, text = result.get("code"), str(result.get("error"))
            message = f"{code}: {text}" if code else text
            raise InferenceError("ERR_RPC_UNAVAILABLE", f"{name} failed: {message}",
                                 {"reason": code or text, "text": message})
        return result, payload

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(InferenceError("ERR_RPC_UNAVAILABLE", why))

    async def _supervise(self) -> None:
        backoff = 0.2
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._reader is not None:
                await self._reader
            if self._closing:
                self._fail_pending("the sidecar was closed")
                return
            started = time.monotonic()
            log.error("Node sidecar exited; restarting it", extra={"exitCode": code,
                                                                 "pendingCommands":
                                                                 len(self._pending)})
            self._fail_pending(f"the Node sidecar exited (code {code}) while this request was "
                               "in flight; it is being restarted, retry the request")
            while not self._closing:
                try:
                    self.info = await self._spawn(30)
                    break
                except (InferenceError, OSError) as exc:
                    log.error("sidecar restart failed", extra={"error": str(exc)})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            self.restarts += 1
            backoff = 0.2
            log.info("Node sidecar restarted", extra={"restartMs": round(
                (time.monotonic() - started) * 1000)})
            for step in self._on_restart:
                try:
                    await step()
                except InferenceError as exc:
                    log.error("after-restart step failed", extra={"error": exc.message})

    async def close(self, timeout: float = 10) -> None:
        self._closing = True
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(Exception):
                await self._starting
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(InferenceError, ConnectionError):
            self._write({"t": "close"})
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for task in list(self._calls):
            task.cancel()

