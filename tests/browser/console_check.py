"""The web console in a real Chromium, driven by Selenium, with no network but loopback.

Run by ``tests/test_console.py`` inside a network namespace of its own (``unshare
--net``), so every host but 127.0.0.1 is unreachable to the worker, the publisher and
the browser alike. Not collected by the suite on its own (the name has no ``test_``
prefix): ``CONSOLE_BROWSER_DIR`` names the checkout's Chromium, ``CONSOLE_SCREENSHOTS``
where the pages' pictures go.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from tests.helpers import DIGIT_ZERO, EXAMPLES, Worker, make_repo, running_worker, wait_for
from tests.rack_helpers import local_testnet
from tests.test_drives import publishing

BROWSER = Path(os.environ.get("CONSOLE_BROWSER_DIR", ".browser"))
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", "/tmp/console-screenshots"))
#: the drive-sourced model whose fetch the Models page shows: large enough that a fast
#: machine still takes several feed ticks (one a second) to fetch it
PEER_MODEL = "qwen2.5-coder"


#: a model's row on the Models page: its state and its progress bar's share, or null
ROW_STATE = """
const row = document.querySelector(`tr[data-model=${arguments[0]}]`);
if (!row) return [null, null];
const bar = row.querySelector('.bar');
return [row.dataset.state, bar ? bar.dataset.share : null];"""


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[list[str]]:
    with local_testnet(3) as boot:
        yield boot


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, bootstrap: list[str]) -> Iterator[Worker]:
    """The example models, and one model whose files come from a peer's drive."""
    root = tmp_path_factory.mktemp("console")
    repo = make_repo(root / "repo", {m: m for m in ("digits", "digits-cnn", "minilm",
                                                    "smollm2")})
    with publishing([EXAMPLES / PEER_MODEL], bootstrap, root) as publisher:
        spec = json.loads((EXAMPLES / PEER_MODEL / "model.json").read_text())
        artifact = EXAMPLES / PEER_MODEL / spec["file"]
        digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
        (repo / "peer-model").mkdir()
        (repo / "peer-model" / "model.json").write_text(json.dumps({
            **spec, "sha256": digest, "description": "fetched from a peer's Hyperdrive",
            "source": {"hyperdrive": publisher.key, "version": publisher.version,
                       "path": f"/{PEER_MODEL}"}}))
        with running_worker(repo, root / "w.log", preload=["digits", "digits-cnn", "minilm",
                                                            "smollm2"],
                            bootstrap=",".join(bootstrap), store_dir=str(root / "store")
                            ) as running:
            yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(BROWSER / "chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,800", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path=str(BROWSER / "chromedriver")))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: WebDriver, page: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    assert driver.save_screenshot(str(SHOTS / f"console-{page}.png"))


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The text of every element the selector finds, read in one script: the page redraws
    its tables from the live feed, so an element found in one WebDriver call can be gone
    by the next."""
    found = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector)
    return [str(one) for one in found]


def test_overview_lists_the_loaded_models_and_moves_under_load(browser: WebDriver,
                                                               worker: Worker) -> None:
    started = time.monotonic()
    browser.get(worker.url + "/")
    cards = wait_for("the loaded models on the overview",
                     lambda: "digits" in text(browser, "status-cards")
                     and text(browser, "status-cards"), timeout=10)
    shown_after = time.monotonic() - started
    sys.stdout.write(f"loaded models shown {shown_after:.2f} s after the page was asked\n")
    assert shown_after < 2.0, "the loaded models took over 2 s to show"
    assert "smollm2" in cards and "minilm" in cards
    assert text(browser, "feed-state") == "live"

    def busiest() -> float:
        return float(browser.find_element(By.ID, "chart-rps").get_attribute("data-max") or 0)

    before = busiest()
    stop = threading.Event()

    def load(path: str, body: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:  # until the test has seen what it waits for
            with httpx.Client(base_url=worker.url, timeout=60) as client:
                while not stop.is_set():
                    client.post(path, json=body)
        return run

    chat = {"model": "smollm2", "max_tokens": 24,
            "messages": [{"role": "user", "content": "Say something about the sea."}]}
    threads = [threading.Thread(target=load("/api/inference/digits",
                                            {"inputData": DIGIT_ZERO})),
               threading.Thread(target=load("/v1/embeddings", {
                   "model": "minilm", "input": ["a sentence to embed"]})),
               threading.Thread(target=load("/v1/chat/completions", chat))]
    for thread in threads:
        thread.start()

    def shown(chart: str, key: str = "data-max") -> float:
        return float(browser.find_element(By.ID, chart).get_attribute(key) or 0)

    try:
        wait_for("the requests chart to rise", lambda: busiest() > before, timeout=15)
        wait_for("requests in the last second", lambda: shown("chart-rps", "data-last") > 0)
        wait_for("the first-token chart", lambda: shown("chart-llm") > 0, timeout=60)
        wait_for("latencies", lambda: shown("chart-latency") > 0)
        time.sleep(5)  # a few seconds of figures on the charts for the screenshot
        shoot(browser, "overview")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    wait_for("the sequences table", lambda: "smollm2" in text(browser, "sequences"))


def test_the_chat_streams_and_stops(browser: WebDriver, worker: Worker) -> None:
    browser.get(worker.url + "/#playground")
    wait_for("the chat's models", lambda: "smollm2" in text(browser, "chat-model"))
    browser.find_element(By.CSS_SELECTOR, "#chat-model option[value=smollm2]").click()
    temperature = browser.find_element(By.ID, "chat-temperature")
    temperature.clear()
    temperature.send_keys("0")
    browser.find_element(By.ID, "chat-input").send_keys("Name the capital of France.")
    browser.find_element(By.ID, "chat-send").click()

    def answered() -> bool:
        last = browser.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant")[-1]
        return bool(browser.find_element(By.ID, "chat-send").is_enabled()
                    and last.get_attribute("data-deltas"))

    wait_for("the streamed answer", answered, timeout=60)
    last = browser.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant")[-1]
    assert "Paris" in last.text, last.text
    # the page shows each piece of the stream as it comes (counted by the page itself,
    # so however fast the answer, no piece goes unseen)
    pieces = int(last.get_attribute("data-deltas") or 0)
    assert pieces > 2, f"the answer came whole, not streamed: {pieces} piece(s)"
    assert "/v1/chat/completions" in browser.execute_script(
        "return document.getElementById('chat-curl').textContent")

    browser.find_element(By.ID, "chat-clear").click()
    max_tokens = browser.find_element(By.ID, "chat-max")
    max_tokens.clear()
    max_tokens.send_keys("1500")
    browser.find_element(By.ID, "chat-input").send_keys(
        "Write a very long story about a lighthouse keeper, in many chapters.")
    browser.find_element(By.ID, "chat-send").click()
    wait_for("the long answer to begin", lambda: len(browser.find_elements(
        By.CSS_SELECTOR, "#chat-log .msg.assistant")[-1].text) > 40, timeout=60, every=0.05)
    shoot(browser, "playground-chat")
    browser.find_element(By.ID, "chat-stop").click()
    wait_for("the page to say it stopped", lambda: "generation stopped" in text(browser,
                                                                                "chat-log"))
    stops = wait_for("the worker's log of the stop", lambda: [
        line for line in worker.log_lines() if line.get("msg") == "generation stopped"
        and line.get("reason") == "disconnected"], timeout=15)
    assert stops[-1]["modelId"] == "smollm2"


def test_embeddings_images_and_drawn_digits(browser: WebDriver, worker: Worker,
                                            tmp_path: Path) -> None:
    browser.get(worker.url + "/#playground")
    wait_for("the embedding models", lambda: "minilm" in text(browser, "embed-model"))
    browser.find_element(By.ID, "embed-run").click()
    cosine = wait_for("the cosine", lambda: browser.find_element(
        By.ID, "embed-result").get_attribute("data-cosine"))
    assert 0.3 < float(cosine) < 1.0

    from PIL import Image

    png = tmp_path / "zero.png"  # an 8x8 zero from the digits set, as a file to choose
    image = Image.new("L", (8, 8))
    image.putdata([int(v * 255 / 16) for v in DIGIT_ZERO])
    image.save(png)
    browser.find_element(By.ID, "image-file").send_keys(str(png))
    label = wait_for("the image's class", lambda: browser.find_element(
        By.ID, "image-result").get_attribute("data-label"))
    assert label == "0"

    pad = browser.find_element(By.ID, "pad")
    # a ring drawn with the pointer, as a person draws a zero
    browser.execute_script("""
      const pad = arguments[0], r = pad.getBoundingClientRect();
      const at = (a) => ({clientX: r.left + 80 + 45 * Math.sin(a),
                          clientY: r.top + 80 - 60 * Math.cos(a), bubbles: true, pointerId: 1});
      pad.dispatchEvent(new PointerEvent('pointerdown', at(0)));
      for (let a = 0; a <= 6.4; a += 0.2) pad.dispatchEvent(new PointerEvent('pointermove', at(a)));
      window.dispatchEvent(new PointerEvent('pointerup', at(6.4)));""", pad)
    browser.find_element(By.ID, "pad-run").click()
    drawn = wait_for("the drawing's class", lambda: browser.find_element(
        By.ID, "pad-result").get_attribute("data-label"))
    assert drawn == "0", text(browser, "pad-result")
    assert '{"inputData":[' in browser.execute_script(
        "return document.getElementById('pad-curl').textContent")
    shoot(browser, "playground")


def test_models_page_shows_a_fetch_and_loads_and_unloads(browser: WebDriver,
                                                          worker: Worker) -> None:
    browser.get(worker.url + "/#models")
    row = wait_for("the models table", lambda: texts(browser, "tr[data-model=peer-model]"))
    assert "drive" in row[0]

    shares: list[float] = []
    answer: dict[str, Any] = {}  # the load's status and body, once it answers

    def post_load() -> None:
        reply = httpx.post(f"{worker.url}/api/models/peer-model/load", timeout=300)
        answer.update(status=reply.status_code, body=reply.text[:2000])

    load = threading.Thread(target=post_load)
    load.start()
    try:
        def watch() -> bool:
            row_state, share = browser.execute_script(ROW_STATE, "peer-model")
            if row_state == "loaded":
                return True
            if answer and answer["status"] != 200:  # a refused fetch says why at once
                raise AssertionError(f"the drive model's load failed: {answer}")
            if share is not None:
                if not shares or shares[-1] != float(share):
                    shares.append(float(share))
                if len(shares) == 2 and not (SHOTS / "console-models.png").exists():
                    shoot(browser, "models")
            return False

        try:
            wait_for("the drive model to load", watch, timeout=240, every=0.05)
        except AssertionError as exc:  # what the worker logged of it, to tell why
            said = [line for line in worker.log_lines()
                    if "peer-model" in json.dumps(line) or "drive" in json.dumps(line)]
            raise AssertionError(f"{exc}; progress seen {shares}; load {answer or 'pending'}; "
                                 f"the worker's log of it: {said[-20:]}") from None
    finally:
        load.join()
    moving = [s for s in shares if s < 1.0]
    sys.stdout.write(f"fetch progress seen on the page: {shares}\n")
    assert len(moving) >= 2 and moving == sorted(moving), f"progress seen: {shares}"

    # unload and load digits with the page's buttons (the table is redrawn as models
    # change, so each look at it is one script: no element outlives a redraw)
    def button(model: str) -> str:
        return str(browser.execute_script(
            "const b = document.querySelector(`tr[data-model=${arguments[0]}] button`);"
            "return b ? b.textContent : '';", model))

    def click(model: str) -> None:
        browser.execute_script(
            "document.querySelector(`tr[data-model=${arguments[0]}] button`).click()", model)

    def state_of(model: str) -> str:
        return str(httpx.get(f"{worker.url}/api/models/{model}", timeout=10).json()["state"])

    assert button("digits") == "Unload"
    click("digits")
    wait_for("digits unloaded", lambda: state_of("digits") == "available")
    wait_for("the Load button", lambda: button("digits") == "Load")
    click("digits")
    wait_for("digits loaded", lambda: state_of("digits") == "loaded")
    wait_for("the Unload button", lambda: button("digits") == "Unload")
    if not (SHOTS / "console-models.png").exists():
        shoot(browser, "models")


def test_requests_page_lists_failures_first(browser: WebDriver, worker: Worker) -> None:
    bad = httpx.post(f"{worker.url}/api/inference/digits", json={"inputData": [1, 2]},
                     headers={"X-Request-Id": "console-bad-1"}, timeout=10)
    assert bad.status_code == 400
    browser.get(worker.url + "/#requests")
    first = wait_for("the failed request on top", lambda: (rows := texts(
        browser, "#req-body tr")) and "console-bad-1" in rows[0] and rows[0])
    assert "ERR_INVALID_INPUT" in first or "ERR_" in first
    assert "seed" in first
    search = browser.find_element(By.ID, "req-filter")
    search.send_keys("console-bad")
    wait_for("the filter", lambda: len(texts(browser, "#req-body tr")) == 1)
    search.clear()
    search.send_keys(" ")
    shoot(browser, "requests")


def test_no_severe_entries_in_the_browser_console(browser: WebDriver) -> None:
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_the_screenshots_are_1280_by_800() -> None:
    from PIL import Image

    pictures = sorted(SHOTS.glob("console-*.png"))
    assert {p.name for p in pictures} >= {"console-overview.png", "console-models.png",
                                          "console-playground.png", "console-requests.png"}
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.size == (1280, 800), (picture, image.size)
