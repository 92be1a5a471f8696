"""The web console at ``/`` and its live feed: served from the package, under the API's keys,
and in a real Chromium with the network cut off (``tests/browser/console_check.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from wrk_ai_inference.fleet.client import FleetClient, running_clients

from .helpers import (
    DIGIT_ZERO,
    EXAMPLES,
    ROOT,
    Worker,
    examples_worker,
    free_port,
    slow_body,
    wait_for,
)
from .rack_helpers import local_testnet, running_rack

BROWSER = ROOT / ".browser"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with examples_worker(tmp_path_factory, "console", ["digits", "smollm2"]) as running:
        yield running


def feed(url: str, messages: int, headers: dict[str, str] | None = None
         ) -> list[dict[str, Any]]:
    """The first ``messages`` messages of the live feed."""
    got: list[dict[str, Any]] = []
    with httpx.stream("GET", url + "/api/live", headers=headers, timeout=30) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) == messages:
                    break
    return got


def test_the_page_and_its_assets_come_from_the_worker(worker: Worker) -> None:
    page = httpx.get(worker.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    linked = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert len(linked) == 4 and all(u.startswith("/console/") for u in linked), linked
    for url in linked:
        asset = httpx.get(worker.url + url)
        assert asset.status_code == 200, url
        again = httpx.get(worker.url + url, headers={"If-None-Match": asset.headers["etag"]})
        assert again.status_code == 304
    script = httpx.get(worker.url + "/console/console.js").text
    assert not re.search(r"https?://\w", script), "the script names another host"
    missing = httpx.get(worker.url + "/console/../config.json")
    assert missing.status_code == 404
    assert httpx.get(worker.url + "/docs").status_code == 200


def test_the_feed_says_what_the_worker_is_doing(worker: Worker) -> None:
    for _ in range(3):
        assert httpx.post(worker.url + "/api/inference/digits", json={"inputData": DIGIT_ZERO},
                          headers={"X-Request-Id": "feed-ok"}).status_code == 200
    assert httpx.post(worker.url + "/v1/chat/completions", json={
        "model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4}, timeout=60).status_code == 200
    hello, tick, *more = feed(worker.url, 3)  # a request shows at the first tick after it
    assert hello["type"] == "hello" and tick["type"] == "tick"
    requests = [r for m in (hello, tick, *more) for r in m["requests"]]
    assert hello["status"]["state"] == "ready" and hello["status"]["memoryBytes"] > 0
    assert hello["transports"]["http"]["port"] == worker.port
    assert hello["capacity"]["sequences"]["smollm2"]["slots"] >= 1
    models = {m["id"]: m for m in hello["models"]}
    assert models["digits"]["state"] == "loaded" and models["digits"]["source"] == {
        "kind": "local"}
    assert models["mlp"]["state"] == "available"
    mine = [r for r in requests if r["requestId"] == "feed-ok"]
    assert len(mine) == 3 and all(r["transport"] == "seed" and r["ok"] for r in mine)
    chat = [r for r in requests if r["model"] == "smollm2"][-1]
    assert chat["transport"] == "openai" and chat["ttftMs"] > 0 and chat["tokens"] >= 1
    series = [*hello["series"], tick["sample"], *(m["sample"] for m in more)]
    assert sum(s["requests"].get("digits", 0) for s in series) >= 3
    assert more[0]["sample"]["t"] > tick["sample"]["t"]


def test_refusals_are_counted_and_shown(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One slot, no queue: while a run with no natural end holds the slot, a second request
    is refused, and the feed counts it."""
    with examples_worker(tmp_path_factory, "console-full", ["slow", "digits"],
                         max_concurrent_inferences=1, max_queued_inferences=0) as full:
        before = feed(full.url, 1)[0]["capacity"]["refused"]
        with ThreadPoolExecutor(1) as pool:
            endless = pool.submit(httpx.post, full.url + "/api/inference/slow",
                                  json=slow_body(10**9, timeout_ms=120_000), timeout=150)
            wait_for("the endless run", lambda: httpx.get(
                full.url + "/api/capacity").json()["currentLoad"])
            refused = httpx.post(full.url + "/api/inference/digits",
                                 json={"inputData": DIGIT_ZERO})
            assert refused.status_code == 429
            hello = feed(full.url, 1)[0]
            assert hello["capacity"]["refused"] == before + 1
            assert hello["capacity"]["running"] == 1
            full.proc.kill()  # the endless run ends with the worker
            with pytest.raises(httpx.HTTPError):
                endless.result()


def test_api_keys_guard_the_feed_and_actions_but_not_the_page(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with examples_worker(tmp_path_factory, "console-keys", ["digits"],
                         api_keys=["console-s3cret"]) as keyed:
        assert httpx.get(keyed.url + "/").status_code == 200
        assert httpx.get(keyed.url + "/console/console.js").status_code == 200
        assert httpx.get(keyed.url + "/api/live").status_code == 401
        assert httpx.post(keyed.url + "/api/models/digits/unload").status_code == 401
        hello = feed(keyed.url, 1, {"Authorization": "Bearer console-s3cret"})[0]
        assert [m["id"] for m in hello["models"] if m["state"] == "loaded"] == ["digits"]


def test_the_console_in_a_real_browser_with_no_network(tmp_path: Path) -> None:
    """Chromium (unpacked into .browser by ``make setup``) drives the console in a network
    namespace where only loopback exists; the screenshots go to docs/console when
    CONSOLE_SCREENSHOTS names it."""
    reason = BROWSER / "unavailable"
    if reason.is_file():
        pytest.skip(f"no browser: {reason.read_text().strip()}")
    if not (BROWSER / "chromedriver").is_file():
        pytest.skip("no browser: run `make setup` (tests/browser/install_chromium.sh)")
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("no network namespace here (unshare --net needs root)")
    env = {**os.environ, "CONSOLE_BROWSER_DIR": str(BROWSER),
           "CONSOLE_SCREENSHOTS": os.environ.get("CONSOLE_SCREENSHOTS",
                                                 str(tmp_path / "shots"))}
    inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider "
             f"tests/browser/console_check.py")
    done = subprocess.run(["unshare", "--net", "bash", "-c", inner], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


async def test_a_rack_worker_shows_its_key_topics_and_rpc_calls(tmp_path: Path) -> None:
    """``rackHttp``: the console beside RPC, on the same core; a FleetClient in a process
    shows the workers it sees (what the console's fleet panel reads)."""
    port = free_port()
    with local_testnet(3) as bootstrap, running_rack(
            tmp_path, "console-rack", bootstrap, EXAMPLES, preload=["digits"],
            rack_http=True, port=port) as rack:
        url = f"http://127.0.0.1:{port}"
        async with FleetClient(bootstrap) as fleet:
            answer = await fleet.run_inference("digits", DIGIT_ZERO, request_id="console-rpc")
            assert answer["worker"] == rack.key
            assert fleet in running_clients()
            seen = fleet.view()
        assert fleet not in running_clients()
        workers = seen["topics"]["ai-inference:digits"]
        assert [w["key"] for w in workers] == [rack.key] and workers[0]["answered"] == 1
        assert workers[0]["capacity"]["availableModels"] == ["digits"]
        assert httpx.get(url + "/").status_code == 200
        messages = await asyncio.to_thread(feed, url, 3)
        rpc = messages[0]["transports"]["rpc"]
        assert rpc["publicKey"] == rack.key and "ai-inference:digits" in rpc["topics"]
        assert messages[0]["transports"]["http"]["port"] == port
        calls = [r for m in messages for r in m["requests"] if r["model"] == "digits"]
        assert [c["transport"] for c in calls] == ["rpc"], calls
