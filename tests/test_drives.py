"""Models from peers: Hyperdrive and URL sources, fetched, verified, resumed and seeded.

Real processes on a local HyperDHT testnet: a publisher (`wrk-ai-inference publish`),
HTTP workers with empty stores, and a small HTTP file server for URL sources.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from wrk_ai_inference.rpc.client import RpcClient

from .helpers import DIGIT_ZERO, EXAMPLES, ROOT, Worker, make_repo, running_worker
from .rack_helpers import NODE_MODULES, local_testnet, running_rack

SENTENCES = ["peers serve the weights", "a fleet without a hub"]


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[list[str]]:
    with local_testnet(3) as boot:
        yield boot


class Publisher:
    """``wrk-ai-inference publish`` (or, with no folders, ``seed``) in a child process;
    ``line`` is what it printed."""

    def __init__(self, folders: list[Path], bootstrap: list[str], store: Path,
                 log_path: Path, *extra: str) -> None:
        self._log = log_path.open("wb")
        command = ["publish", *map(str, folders), *extra] if folders else ["seed"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wrk_ai_inference.cli", *command,
             "--bootstrap", ",".join(bootstrap), "--store-dir", str(store)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, log_path.read_text()[-3000:]
        self.line: dict[str, Any] = json.loads(line)
        self.key, self.version = str(self.line["key"]), int(self.line["version"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def publishing(folders: list[Path], bootstrap: list[str], root: Path, *extra: str
               ) -> Iterator[Publisher]:
    publisher = Publisher(folders, bootstrap, root / "publisher-store", root / "publisher.log",
                          *extra)
    try:
        yield publisher
    finally:
        publisher.stop()


def sourced_repo(root: Path, models: dict[str, Path], source: dict[str, Any] | None = None,
                 sha256: dict[str, str] | None = None) -> Path:
    """A repository of model.json files only, each naming where its files come from:
    ``source`` with its ``path`` set per model (a drive), or per model URLs in
    ``source["url"]`` (a dict)."""
    root.mkdir(parents=True)
    for model_id, folder in models.items():
        spec = json.loads((folder / "model.json").read_text())
        digest = (sha256 or {}).get(model_id) or hashlib.sha256(
            (folder / spec["file"]).read_bytes()).hexdigest()
        where = dict(source or {})
        if "hyperdrive" in where:
            where["path"] = f"/{folder.name}"
        elif isinstance(where.get("url"), dict):
            where["url"] = where["url"][model_id]
        (root / model_id).mkdir()
        (root / model_id / "model.json").write_text(
            json.dumps({**spec, "sha256": digest, "source": where}))
    return root


def drive_worker(repo: Path, root: Path, name: str, bootstrap: list[str],
                 **config: Any) -> Worker:
    return Worker(repo, root / f"{name}.log", bootstrap=",".join(bootstrap),
                  store_dir=str(root / f"{name}-store"), preload=[], **config)


def answers(url: str) -> dict[str, Any]:
    """What digits and minilm answer: the parts that do not change between loads."""
    digits = httpx.post(f"{url}/api/inference/digits", json={"inputData": DIGIT_ZERO},
                        timeout=30).json()["result"]
    embed = httpx.post(f"{url}/api/inference/minilm", json={"inputData": SENTENCES},
                       timeout=30).json()["result"]
    return {"digits": digits, "minilm": embed}


def load(url: str, model_id: str, timeout: float = 300) -> httpx.Response:
    return httpx.post(f"{url}/api/models/{model_id}/load", timeout=timeout)


def fetch_logs(worker: Worker, model_id: str) -> list[dict[str, Any]]:
    return [line for line in worker.log_lines()
            if line.get("msg") == "drive fetch done" and line.get("modelId") == model_id]


@pytest.fixture(scope="module")
def local_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("local")
    repo = make_repo(root / "repo", {"digits": "digits", "minilm": "minilm"})
    with running_worker(repo, root / "w.log", preload=["digits", "minilm"]) as worker:
        return answers(worker.url)


def test_a_worker_fetches_from_the_publisher_and_the_next_from_that_worker(
        bootstrap: list[str], tmp_path: Path, local_answers: dict[str, Any]) -> None:
    folders = {m: EXAMPLES / m for m in ("digits", "minilm")}
    with publishing(list(folders.values()), bootstrap, tmp_path) as publisher:
        source = {"hyperdrive": publisher.key, "version": publisher.version}
        repo_a = sourced_repo(tmp_path / "repo-a", folders, source)
        a = drive_worker(repo_a, tmp_path, "a", bootstrap)
        try:
            a.wait_ready()
            with ThreadPoolExecutor(3) as pool:  # concurrent loads of one model fetch once
                loads = list(pool.map(lambda m: load(a.url, m), ["minilm", "digits", "minilm"]))
            assert [r.status_code for r in loads] == [200, 200, 200], loads[0].text
            assert len(fetch_logs(a, "minilm")) == 1
            assert answers(a.url) == local_answers
            assert sorted(p.name for p in (repo_a / "minilm").iterdir()) == \
                ["model.json", "model.onnx", "tokenizer.json"]
            publisher.stop()  # from here on, only worker A has the files

            # worker B takes the whole drive as its repository (modelRepository
            # hyperdrive:<key>@<version>): model.json files from the drive, sha256 as signed
            drive = Path(f"hyperdrive:{publisher.key}@{publisher.version}")
            with running_worker(drive, tmp_path / "b.log", bootstrap=",".join(bootstrap),
                                store_dir=str(tmp_path / "b-store"), preload=[]) as b:
                listed = httpx.get(f"{b.url}/api/models", timeout=30).json()["models"]
                assert {m["id"]: m["state"] for m in listed} == \
                    {"digits": "available", "minilm": "available"}
                for model_id in folders:
                    reply = load(b.url, model_id)
                    assert reply.status_code == 200, reply.text
                assert answers(b.url) == local_answers
                fetched = fetch_logs(b, "minilm")[0]
                assert fetched["bytesNetwork"] == fetched["bytesTotal"] > 20_000_000
                assert (tmp_path / "b-store" / "models" / "minilm" / "tokenizer.json").is_file()
        finally:
            a.terminate()


async def test_a_rack_loads_from_a_drive_that_seed_serves_again(bootstrap: list[str],
                                                               tmp_path: Path) -> None:
    """The publisher stops; `seed` on its store serves the same drive; a rack worker's
    loadModel fetches from it (its drives in <store>/<rack>/corestore)."""
    with publishing([EXAMPLES / "digits"], bootstrap, tmp_path) as publisher:
        key, version = publisher.key, publisher.version
    again = Publisher([], bootstrap, tmp_path / "publisher-store", tmp_path / "seed.log")
    try:
        assert (again.key, again.version) == (key, version)
        repo = sourced_repo(tmp_path / "repo", {"digits": EXAMPLES / "digits"},
                            {"hyperdrive": key, "version": version})
        (tmp_path / "rack").mkdir()
        with running_rack(tmp_path / "rack", "drives", bootstrap, repo, preload=[]) as rack:
            async with RpcClient(bootstrap) as client:
                loaded = await client.request(rack.key, "loadModel", {"modelId": "digits"})
                assert loaded["model"]["state"] == "loaded"
                result = await client.request(rack.key, "runInference",
                                              {"modelId": "digits", "inputData": DIGIT_ZERO})
                assert result["result"]["predictions"][0][0]["label"] == "0"
            assert (tmp_path / "rack" / "store" / "drives" / "corestore").is_dir()
    finally:
        again.stop()


def test_a_killed_fetch_resumes_where_it_stopped(bootstrap: list[str], tmp_path: Path) -> None:
    """mlp (100 MB): the worker is killed a third of the way in; started again, it fetches
    only what its part file lacks."""
    folders = {"mlp": EXAMPLES / "mlp"}
    with publishing(list(folders.values()), bootstrap, tmp_path) as publisher:
        repo = sourced_repo(tmp_path / "repo", folders,
                            {"hyperdrive": publisher.key, "version": publisher.version})
        first = drive_worker(repo, tmp_path, "c", bootstrap)
        seen: list[dict[str, Any]] = []
        try:
            first.wait_ready()
            def doomed() -> None:  # its worker is killed under it
                with contextlib.suppress(httpx.HTTPError):
                    load(first.url, "mlp")

            threading.Thread(target=doomed, daemon=True).start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                meta = httpx.get(f"{first.url}/api/models/mlp", timeout=5).json()
                if meta["state"] == "fetching":
                    seen.append(meta["fetch"])
                    if meta["fetch"]["bytesDone"] > meta["fetch"]["bytesTotal"] / 3:
                        break
                time.sleep(0.02)
            sidecars = psutil.Process(first.proc.pid).children()
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            psutil.wait_procs(sidecars, timeout=20)  # it lets go of the store when stdin ends
        finally:
            first.terminate()
        assert seen and seen[-1]["bytesTotal"] == (EXAMPLES / "mlp" / "model.onnx").stat().st_size
        killed_at = seen[-1]["bytesDone"]
        part = (repo / "mlp" / "model.onnx.part").stat().st_size
        assert killed_at - (1 << 20) <= part < seen[-1]["bytesTotal"]  # writes trail reads

        again = drive_worker(repo, tmp_path, "c-again", bootstrap)
        try:
            again.wait_ready()
            reply = load(again.url, "mlp")
            assert reply.status_code == 200, reply.text
            done = fetch_logs(again, "mlp")[0]
            assert done["bytesResumed"] == part
            # only the rest crossed the network (blocks already in the store are local; the
            # block the part file ends in may come whole)
            assert done["bytesNetwork"] <= done["bytesTotal"] - part + (1 << 20)
            result = httpx.post(f"{again.url}/api/inference/mlp",
                                json={"inputData": [[0.5] * 1024]}, timeout=30)
            assert result.status_code == 200, result.text
        finally:
            again.terminate()
        print(f"\nmlp: killed at {killed_at} bytes ({part} in the part file); the restart "  # noqa: T201
              f"fetched {done['bytesNetwork']} of {done['bytesTotal']} over the network")


@pytest.mark.parametrize(("block_size", "flags"), [(1 << 20, ()),
                                                    (65536, ("--block-size", "65536"))])
def test_drives_of_either_block_size_fetch(bootstrap: list[str], tmp_path: Path,
                                           block_size: int, flags: tuple[str, ...]) -> None:
    """Today's publish writes 1 MiB blocks; drives published before it have 64 KiB blocks
    (``--block-size 65536`` makes one as they were made) and fetch the same way."""
    folders = {"mlp": EXAMPLES / "mlp"}
    size = (EXAMPLES / "mlp" / "model.onnx").stat().st_size
    with publishing(list(folders.values()), bootstrap, tmp_path, *flags) as publisher:
        blocks = {f["path"]: f["blocks"] for f in publisher.line["files"]}
        assert blocks["/mlp/model.onnx"] == -(-size // block_size)
        repo = sourced_repo(tmp_path / "repo", folders,
                            {"hyperdrive": publisher.key, "version": publisher.version})
        worker = drive_worker(repo, tmp_path, "w", bootstrap)
        try:
            worker.wait_ready()
            reply = load(worker.url, "mlp")
            assert reply.status_code == 200, reply.text
            assert fetch_logs(worker, "mlp")[0]["bytesNetwork"] >= size
            assert (repo / "mlp" / "model.onnx").read_bytes() == \
                (EXAMPLES / "mlp" / "model.onnx").read_bytes()
        finally:
            worker.terminate()


def test_a_tampered_artifact_is_refused_and_never_served(bootstrap: list[str],
                                                         tmp_path: Path) -> None:
    """The publisher's digits differs from what model.json pins: worker A refuses it and
    keeps none of it; worker B, which would accept those very bytes, cannot get them
    from A."""
    tampered = tmp_path / "pub" / "digits"
    shutil.copytree(EXAMPLES / "digits", tampered)
    with (tampered / "model.onnx").open("ab") as fh:
        fh.write(b"\0" * 64)
    honest = hashlib.sha256((EXAMPLES / "digits" / "model.onnx").read_bytes()).hexdigest()
    actual = hashlib.sha256((tampered / "model.onnx").read_bytes()).hexdigest()
    with publishing([tampered], bootstrap, tmp_path) as publisher:
        source = {"hyperdrive": publisher.key, "version": publisher.version}
        repo_a = sourced_repo(tmp_path / "repo-a", {"digits": tampered}, source,
                              sha256={"digits": honest})
        a = drive_worker(repo_a, tmp_path, "a", bootstrap, fetch_timeout=3000)
        try:
            a.wait_ready()
            reply = load(a.url, "digits")
            assert reply.status_code == 422 and reply.json()["error"] == "ERR_MODEL_LOAD_FAILED"
            assert actual in reply.json()["message"] and honest in reply.json()["message"]
            assert sorted(p.name for p in (repo_a / "digits").iterdir()) == ["model.json"]
            meta = httpx.get(f"{a.url}/api/models/digits", timeout=5).json()
            assert meta["state"] == "failed"
            publisher.stop()

            repo_b = sourced_repo(tmp_path / "repo-b", {"digits": tampered}, source,
                                  sha256={"digits": actual})
            with running_worker(repo_b, tmp_path / "b.log", bootstrap=",".join(bootstrap),
                                store_dir=str(tmp_path / "b-store"), preload=[],
                                fetch_timeout=3000) as b:
                reply = load(b.url, "digits")
                assert reply.status_code == 422, reply.text
                assert "no peer" in reply.json()["message"], reply.text
                assert not (repo_b / "digits" / "model.onnx").exists()
        finally:
            a.terminate()


class _Files(BaseHTTPRequestHandler):
    """Serves one file with byte ranges; the first GET is cut off half-way."""

    path_served: Path
    ranges: list[str | None]
    cut_first: bool

    def do_GET(self) -> None:
        data = self.path_served.read_bytes()
        wanted = self.headers.get("Range")
        self.ranges.append(wanted)
        start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
        if start >= len(data):
            self.send_response(416)
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_first and len(self.ranges) == 1:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection dies half-way
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def file_server(path: Path, cut_first: bool) -> Iterator[tuple[str, list[str | None]]]:
    ranges: list[str | None] = []
    handler = type("Handler", (_Files,), {"path_served": path, "ranges": ranges,
                                          "cut_first": cut_first})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path.name}", ranges
    finally:
        server.shutdown()


def test_a_url_source_resumes_with_a_range_request(tmp_path: Path,
                                                   local_answers: dict[str, Any]) -> None:
    artifact = EXAMPLES / "minilm" / "model.onnx"
    with file_server(artifact, cut_first=True) as (url, ranges):
        repo = sourced_repo(tmp_path / "repo", {"minilm": EXAMPLES / "minilm"},
                            {"url": {"minilm": url}})
        shutil.copy2(EXAMPLES / "minilm" / "tokenizer.json", repo / "minilm")
        with running_worker(repo, tmp_path / "w.log", preload=[], fetch_timeout=5000) as w:
            first = load(w.url, "minilm")
            assert first.status_code == 422 and "GET " in first.json()["message"]
            part = (repo / "minilm" / "model.onnx.part").stat().st_size
            assert 0 < part < artifact.stat().st_size
            second = load(w.url, "minilm")
            assert second.status_code == 200, second.text
            assert ranges == [None, f"bytes={part}-"]
            embed = httpx.post(f"{w.url}/api/inference/minilm", json={"inputData": SENTENCES},
                               timeout=30).json()["result"]
            assert embed == local_answers["minilm"]


def test_a_url_source_with_the_wrong_bytes_is_refused(tmp_path: Path) -> None:
    with file_server(EXAMPLES / "digits" / "model.onnx", cut_first=False) as (url, _):
        repo = sourced_repo(tmp_path / "repo", {"digits": EXAMPLES / "digits"},
                            {"url": {"digits": url}}, sha256={"digits": "ab" * 32})
        with running_worker(repo, tmp_path / "w.log", preload=[]) as w:
            reply = load(w.url, "digits")
            assert reply.status_code == 422 and "ab" * 32 in reply.json()["message"]
            assert sorted(p.name for p in (repo / "digits").iterdir()) == ["model.json"]


def test_a_source_needs_a_sha256_and_a_drive_needs_a_dht(tmp_path: Path) -> None:
    repo = sourced_repo(tmp_path / "repo", {"digits": EXAMPLES / "digits",
                                            "nosha": EXAMPLES / "digits"},
                        {"hyperdrive": "ab" * 32})
    spec = json.loads((repo / "nosha" / "model.json").read_text())
    del spec["sha256"]
    (repo / "nosha" / "model.json").write_text(json.dumps(spec))
    with running_worker(repo, tmp_path / "w.log", preload=[]) as w:
        reply = load(w.url, "nosha")
        assert reply.status_code == 422 and "sha256" in reply.json()["message"]
        reply = load(w.url, "digits")
        assert reply.status_code == 422 and "--bootstrap" in reply.json()["message"]


def misfit_repo(root: Path, source: dict[str, Any]) -> Path:
    """'digits' pinned to its real sha256 and 'misfit' to another, both naming the
    drive's /digits folder."""
    repo = sourced_repo(root, {"digits": EXAMPLES / "digits", "misfit": EXAMPLES / "digits"},
                        source, sha256={"misfit": "cd" * 32})
    spec = repo / "misfit" / "model.json"
    spec.write_text(spec.read_text().replace('"/misfit"', '"/digits"'))
    return repo


def assert_another_worker_fetches_digits(root: Path, bootstrap: list[str],
                                         source: dict[str, Any]) -> None:
    """A fresh worker loads digits from whoever still serves the drive, and answers."""
    repo = sourced_repo(root / "repo-b", {"digits": EXAMPLES / "digits"}, source)
    with running_worker(repo, root / "b.log", bootstrap=",".join(bootstrap),
                        store_dir=str(root / "b-store"), preload=[],
                        fetch_timeout=10000) as b:
        reply = load(b.url, "digits")
        assert reply.status_code == 200, reply.text
        assert answers_digits(b.url) == "0"


def test_a_wrong_pin_never_stops_the_seeding_of_a_good_one(bootstrap: list[str],
                                                           tmp_path: Path) -> None:
    """Two model.json files name one drive folder: 'digits' pins its real sha256 and is
    loaded, 'misfit' pins another and is refused. Worker B still fetches digits from A
    once the publisher is gone: the refusal took nothing A verified."""
    with publishing([EXAMPLES / "digits"], bootstrap, tmp_path) as publisher:
        source = {"hyperdrive": publisher.key, "version": publisher.version}
        a = drive_worker(misfit_repo(tmp_path / "repo-a", source), tmp_path, "a", bootstrap,
                         fetch_timeout=5000)
        try:
            a.wait_ready()
            assert load(a.url, "digits").status_code == 200
            refused = load(a.url, "misfit")
            assert refused.status_code == 422 and "cd" * 32 in refused.json()["message"]
            publisher.stop()  # from here on, only worker A has the files
            assert_another_worker_fetches_digits(tmp_path, bootstrap, source)
        finally:
            a.terminate()


@contextlib.contextmanager
def plain_drive(folders: dict[str, Path], bootstrap: list[str], store: Path
                ) -> Iterator[dict[str, Any]]:
    """A drive made by plain Hyperdrive (tests/node/plain_drive.js): no signed sha256."""
    plan = {"bootstrap": bootstrap, "store": str(store),
            "folders": [{"name": n, "path": str(p)} for n, p in folders.items()]}
    proc = subprocess.Popen(["node", str(ROOT / "tests" / "node" / "plain_drive.js"),
                             json.dumps(plan)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "plain_drive.js did not start"
        yield json.loads(line)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bytes_refused_after_a_fetch_never_take_a_verified_model_s(bootstrap: list[str],
                                                                   tmp_path: Path) -> None:
    """An unsigned drive: a wrong pin is found only once the bytes are fetched. They are
    the very blobs 'digits' was verified from, so they stay, and so does the seeding:
    worker B fetches digits from A after the drive's maker is gone."""
    with contextlib.ExitStack() as stack:
        with plain_drive({"digits": EXAMPLES / "digits"}, bootstrap, tmp_path / "maker") as made:
            source = {"hyperdrive": made["key"], "version": made["version"]}
            repo_a = misfit_repo(tmp_path / "repo-a", source)
            a = drive_worker(repo_a, tmp_path, "a", bootstrap, fetch_timeout=5000)
            stack.callback(a.terminate)
            a.wait_ready()
            assert load(a.url, "digits").status_code == 200
            refused = load(a.url, "misfit")
            assert refused.status_code == 422, refused.text
            assert "discarded" in refused.json()["message"]
            assert sorted(p.name for p in (repo_a / "misfit").iterdir()) == ["model.json"]
        # the drive's maker is gone: only worker A holds it
        assert_another_worker_fetches_digits(tmp_path, bootstrap, source)


def answers_digits(url: str) -> str:
    result = httpx.post(f"{url}/api/inference/digits", json={"inputData": DIGIT_ZERO},
                        timeout=30).json()["result"]
    return str(result["predictions"][0][0]["label"])


def test_seeding_a_drive_nobody_holds_fails_at_fetch_timeout(bootstrap: list[str],
                                                             tmp_path: Path) -> None:
    """The model's file is already in its folder (verified), but no peer holds its drive
    and this store never synced it: the load fails with the reason once fetchTimeout
    has passed, not after a fixed minute."""
    with publishing([EXAMPLES / "digits"], bootstrap, tmp_path) as publisher:
        source = {"hyperdrive": publisher.key, "version": publisher.version}
    repo = sourced_repo(tmp_path / "repo", {"digits": EXAMPLES / "digits"}, source)
    shutil.copy2(EXAMPLES / "digits" / "model.onnx", repo / "digits")
    with running_worker(repo, tmp_path / "w.log", bootstrap=",".join(bootstrap),
                        store_dir=str(tmp_path / "store"), preload=[],
                        fetch_timeout=2000) as w:
        started = time.monotonic()
        reply = load(w.url, "digits")
        took = time.monotonic() - started
        assert reply.status_code == 422, reply.text
        assert "no peer holding this drive was found" in reply.json()["message"], reply.text
        assert took < 30, took  # fetchTimeout (2 s) per wait, never a fixed minute
