"""The Node bridge as a supervised child process.

Python owns the bridge: it starts ``node bridge.js``, sends the keys and
settings, and answers the RPC calls the bridge forwards. If the bridge dies,
every request waiting on it fails at once with ERR_RPC_UNAVAILABLE, and the
bridge is started again with the same seeds (so the same public key) and the
same announced topics.
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

from ..errors import InferenceError
from ..logs import get_logger
from . import framing
from .framing import error_reply

log = get_logger("rpc.bridge")

NODE_DIR = Path(__file__).parent / "node"
#: The files the bridge needs beside its node_modules (shipped as package data).
_NODE_FILES = ("bridge.js", "frames.js", "testnet.js", "package.json", "package-lock.json")

CallHandler = Callable[[str, bytes, str], Awaitable[bytes]]


def _installed(folder: Path) -> bool:
    return (folder / "node_modules" / "hyperdht").is_dir()


def node_cache_dir() -> Path:
    """Where an installed package keeps the bridge's npm packages: a user-writable
    cache, one folder per version of the bridge's files (so an upgrade reinstalls)."""
    digest = hashlib.sha256()
    for name in _NODE_FILES:
        digest.update((NODE_DIR / name).read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wrk-ai-inference" / f"node-{digest.hexdigest()[:16]}"


def node_dir() -> Path:
    """The folder to run the bridge from, with its npm packages installed.

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
                             f"PATH to install the bridge's packages; or run: {command}")
    log.info("installing the Node bridge's packages (first use)",
             extra={"folder": str(cache), "command": "npm ci --omit=dev"})
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=_made(cache.parent)))
    try:
        for name in _NODE_FILES:
            shutil.copy2(NODE_DIR / name, staging / name)
        done = subprocess.run([npm, "ci", "--omit=dev", "--no-audit", "--no-fund",
                               "--loglevel=error"], cwd=staging, capture_output=True,
                              text=True, timeout=600, check=False)
        if done.returncode != 0 or not _installed(staging):
            raise InferenceError("ERR_RPC_UNAVAILABLE", "npm ci failed for the Node bridge "
                                 f"({done.stderr.strip()[-300:]}); run: {command}")
        with contextlib.suppress(OSError):  # another process may have finished first
            staging.rename(cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _installed(cache):
        raise InferenceError("ERR_RPC_UNAVAILABLE", f"the Node bridge's packages are not in "
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


class NodeBridge:
    """One bridge process at a time; restarted while ``supervise`` is on."""

    def __init__(self, init: dict[str, Any], on_call: CallHandler | None = None,
                 on_refused: Callable[[str], None] | None = None,
                 on_restart: Callable[[], Awaitable[None]] | None = None) -> None:
        self._init = init
        self._on_call = on_call
        self._on_refused = on_refused
        self._on_restart = on_restart
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._next_id = 1
        self._generation = 0
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self.info: dict[str, Any] = {}
        self.restarts = 0
        self.lost_calls = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout: float = 30) -> dict[str, Any]:
        self.info = await self._spawn(timeout)
        self._supervisor = asyncio.create_task(self._supervise())
        return self.info

    async def _spawn(self, timeout: float) -> dict[str, Any]:
        folder = await asyncio.to_thread(node_dir)
        self._proc = await asyncio.create_subprocess_exec(
            node_binary(), str(folder / "bridge.js"), cwd=folder, stdin=asyncio.subprocess.PIPE,
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
                                 f"the Node bridge did not start within {timeout}s") from None

    def _write(self, header: dict[str, Any], body: bytes = b"") -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise InferenceError("ERR_RPC_UNAVAILABLE", "the Node bridge is not running")
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
            log.exception("bad frame from the Node bridge")
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
        elif kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(header)
        elif kind == "refused":
            log.warning("peer refused by the firewall", extra={"peer": header.get("peer")})
            if self._on_refused is not None:
                self._on_refused(str(header.get("peer")))
        elif kind == "log":
            level = {"error": 40, "warning": 30}.get(str(header.pop("level", "")), 20)
            msg = str(header.pop("msg", "bridge"))
            header.pop("t", None)
            log.log(level, msg, extra={"bridge": header})

    async def _answer(self, header: dict[str, Any], body: bytes, generation: int) -> None:
        """Exactly one reply per call, whatever the handler does: a caller must never be
        left to its own time-out."""
        assert self._on_call is not None
        try:
            reply = await self._on_call(str(header.get("method")), body,
                                        str(header.get("peer")))
        except Exception as exc:
            log.exception("RPC call handler failed", extra={"method": header.get("method")})
            error = InferenceError.internal(exc)
            reply = error_reply(error.code, error.message)
        if generation != self._generation:
            self.lost_calls += 1  # the bridge that asked has died; its client saw the error
            return
        with contextlib.suppress(InferenceError):
            self._write({"t": "reply", "id": header["id"]}, reply)

    async def command(self, header: dict[str, Any], body: bytes = b"",
                      timeout: float = 30) -> tuple[dict[str, Any], bytes]:
        """Send a command that answers with a result frame; raise on failure."""
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = \
            asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._write({**header, "id": request_id}, body)
            result, payload = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise InferenceError("ERR_RPC_UNAVAILABLE",
                                 f"bridge command {header.get('t')} got no answer in {timeout}s"
                                 ) from None
        finally:
            self._pending.pop(request_id, None)
        if not result.get("ok"):
            raise InferenceError("ERR_RPC_UNAVAILABLE",
                                 f"{header.get('t')} failed: {result.get('error')}",
                                 {"reason": result.get("error")})
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
                self._fail_pending("the bridge was closed")
                return
            started = time.monotonic()
            log.error("Node bridge exited; restarting it", extra={"exitCode": code,
                                                                 "pendingCommands":
                                                                 len(self._pending)})
            self._fail_pending(f"the Node bridge exited (code {code}) while this request was "
                               "in flight; it is being restarted, retry the request")
            while not self._closing:
                try:
                    self.info = await self._spawn(30)
                    break
                except (InferenceError, OSError) as exc:
                    log.error("bridge restart failed", extra={"error": str(exc)})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            self.restarts += 1
            backoff = 0.2
            log.info("Node bridge restarted", extra={"publicKey": self.info.get("publicKey"),
                                                     "restartMs": round(
                                                         (time.monotonic() - started) * 1000)})
            if self._on_restart is not None:
                try:
                    await self._on_restart()
                except InferenceError as exc:
                    log.error("after-restart step failed", extra={"error": exc.message})

    async def close(self, timeout: float = 10) -> None:
        self._closing = True
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

