"""Testnet, rack worker processes and the plain Node orchestrator, for the rack tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from wrk_ai_inference.engine.request_journal import RequestJournal

from .helpers import ROOT, ChildProcess

NODE_MODULES = ROOT / "src" / "wrk_ai_inference" / "p2p" / "node" / "node_modules"
ORCHESTRATOR = ROOT / "tests" / "node" / "orchestrator.js"


@contextlib.contextmanager
def local_testnet(nodes: int = 3) -> Iterator[list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "wrk_ai_inference.cli", "testnet",
                             "--nodes", str(nodes)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        bootstrap = json.loads(line)["bootstrap"]
        assert all(b.startswith("127.0.0.1:") for b in bootstrap)
        yield bootstrap
    finally:
        proc.terminate()
        proc.wait(10)


class Rack(ChildProcess):
    """``wrk-ai-inference rack`` in a child process, with its own store and status dirs."""

    def __init__(self, root: Path, rack: str, bootstrap: list[str], repo: Path,
                 config_dir: Path | None = None, **config: Any) -> None:
        self.root = root
        self.rack = rack
        self.status_path = root / "status" / f"wrk-ai-inference.{rack}.json"
        self.log_path = root / f"{rack}.log"
        self.journal_path = root / "store" / rack / "requests.journal"
        args = [sys.executable, "-m", "wrk_ai_inference.cli", "rack", "--rack", rack,
                "--bootstrap", ",".join(bootstrap), "--store-dir", str(root / "store"),
                "--status-dir", str(root / "status"), "--model-repository", str(repo),
                "--health-check-interval", "1000"]
        if config_dir is not None:
            args += ["--config", str(config_dir)]
        for key, value in config.items():
            text = json.dumps(value) if isinstance(value, list | bool) else str(value)
            args += [f"--{key.replace('_', '-')}", text]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WRK_AI_INFERENCE_")}
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rack exited {self.proc.returncode}:\n{self.logs()}")
            if "rack worker ready" in self.logs()[self._offset:]:
                return self.status()
            time.sleep(0.05)
        raise RuntimeError(f"rack not ready:\n{self.logs()}")

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.status_path.read_text())
        return data

    @property
    def key(self) -> str:
        return str(self.status()["rpcPublicKey"])

    def logs(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def logs_since_start(self) -> str:
        """This process's lines (the log file is shared by restarts of one rack)."""
        return self.logs()[self._offset:]

    def kill(self, strand_answers: bool = False) -> None:
        """SIGKILL the worker and its sidecar together, as when their host dies.

        ``strand_answers``: first leave answers written but never sent (the case a
        request window that does not survive the kill would answer twice). The worker is
        paused while its sidecar goes on handing it the calls that arrive; then the
        sidecar is paused and the worker resumed, and it answers those calls into the
        paused sidecar. Pausing only the sidecar stranded an answer only when one was
        being computed at that instant, which was not every run."""
        pids = [self.proc.pid]
        with contextlib.suppress(FileNotFoundError, KeyError, ValueError):
            pids.append(int(self.status()["sidecarPid"]))
        if strand_answers and len(pids) == 2:
            os.kill(pids[0], signal.SIGSTOP)
            time.sleep(0.2)
            os.kill(pids[1], signal.SIGSTOP)
            os.kill(pids[0], signal.SIGCONT)
            time.sleep(0.3)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()



@contextlib.contextmanager
def running_rack(root: Path, rack: str, bootstrap: list[str], repo: Path,
                 **config: Any) -> Iterator[Rack]:
    worker = Rack(root, rack, bootstrap, repo, **config)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def orchestrate(bootstrap: list[str], key: str | None, steps: list[dict[str, Any]],
                seed: str | None = None, timeout_ms: int = 30_000,
                wall_s: float = 120) -> list[dict[str, Any]]:
    """Run the plain Node orchestrator; one result dict per step."""
    plan = {"bootstrap": bootstrap, "key": key, "steps": steps, "seed": seed,
            "timeout": timeout_ms}
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run([node, str(ORCHESTRATOR), json.dumps(plan)], capture_output=True,
                          text=True, timeout=wall_s,
                          env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == len(steps) + 1, done.stdout
    return lines[:-1]


def count_runs(workers: Iterable[tuple[Path, Path]], prefix: str
               ) -> tuple[Counter[str], Counter[str]]:
    """Per ``requestId`` that starts with ``prefix``: (runs that answered, runs started),
    over every process of each worker, a killed one's included. ``workers``: each one's
    log (``--debug true``) and its request journal.

    Both counts come from the journals. A run answered when its answer line is there:
    that line is written before the answer leaves, and it is what a restarted worker
    replays, so it is where a run commits. A process killed after computing an answer
    but before writing that line died unanswered (its restarted self says ``lost``), and
    the client may run the request once more elsewhere, as docs/fleet.md says; counting
    answers anywhere before the journal counted that run as an answer.

    Both journal generations are read (``RequestJournal.entries``); the debug lines say
    whether rotation lost a run (each run logs ``requestId started`` just before its
    journal line, so a process death can leave one id logged and not journaled, never
    more)."""
    ended: Counter[str] = Counter()
    started: Counter[str] = Counter()
    for log, journal in workers:
        logged: set[str] = set()
        processes = 0
        for line in log.read_text(errors="replace").splitlines():
            if "rack worker ready" in line:
                processes += 1
            elif '"requestId started"' in line:
                request_id = json.loads(line)["callerRequestId"]
                if request_id.startswith(prefix):
                    logged.add(request_id)
        journaled: set[str] = set()
        for entry in RequestJournal(journal, 1).entries():
            request_id = entry["id"]
            if not request_id.startswith(prefix):
                continue
            if "model" in entry:
                started[request_id] += 1
                journaled.add(request_id)
            elif "ok" in entry:
                ended[request_id] += 1
        missing = sorted(logged - journaled)
        assert len(missing) <= processes, (
            f"{journal} lost {len(missing)} runs to rotation (e.g. {missing[:3]}): raise "
            "requestIdWindow above the calls one process takes")
    return ended, started
