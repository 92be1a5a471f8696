"""Speech to text: whisper-tiny-en (faster-whisper) through the OpenAI client unchanged,
the seed API and RPC, with hostile audio, a deadline and a cancel.

The recordings are pytest-audioeval 0.1.3's English samples (MIT), copied into
tests/fixtures/audio with their transcripts.
"""

from __future__ import annotations

import base64
import io
import re
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from openai import BadRequestError, OpenAI

from wrk_ai_inference.rpc.client import RpcClient
from wrk_ai_inference.tasks.speech_to_text import decode

from .helpers import EXAMPLES, ROOT, Worker, examples_worker, running_worker, wait_for
from .rack_helpers import local_testnet, running_rack

AUDIO = ROOT / "tests" / "fixtures" / "audio"
MODEL = "whisper-tiny-en"


DIGITS = {word: str(n) for n, word in enumerate(
    ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"], 1)}


def words(text: str) -> list[str]:
    """A transcript's words, with case and punctuation aside, and numbers said one after
    another as one run of digits: Whisper writes a count as words, as "1, 2, 3" or,
    decoding the same audio on a CPU with other kernels, as "1-2-3-4-567-8-9-10"."""
    out: list[str] = []
    for word in re.findall(r"[a-z0-9']+", text.lower()):
        word = DIGITS.get(word, word)
        if word.isdigit() and out and out[-1].isdigit():
            out[-1] += word
        else:
            out.append(word)
    return out


def expected(name: str) -> list[str]:
    return words((AUDIO / f"{name}.txt").read_text())


def pcm16(name: str) -> np.ndarray:
    """A fixture's samples as 16-bit PCM at 16 kHz (the files are 32-bit float WAVs)."""
    samples = decode((AUDIO / f"{name}.wav").read_bytes(), 600)
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16)


def long_recording(seconds: float) -> bytes:
    """A WAV of the fox sentence said again and again: speech for ``seconds``."""
    once = pcm16("quick_brown_fox")
    repeats = int(seconds * 16000 / once.size) + 1
    return _wav(16000, 2, np.tile(once, repeats).tobytes())


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with examples_worker(tmp_path_factory, "speech", [MODEL]) as running:
        yield running


@pytest.fixture(scope="module")
def client(worker: Worker) -> OpenAI:
    return OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("name", ["hello_world", "quick_brown_fox"])
def test_the_openai_client_transcribes_word_for_word(client: OpenAI, name: str) -> None:
    with (AUDIO / f"{name}.wav").open("rb") as recording:
        answer = client.audio.transcriptions.create(model=MODEL, file=recording)
    assert words(answer.text) == expected(name), answer.text


def test_verbose_json_srt_and_vtt(client: OpenAI) -> None:
    recording = (AUDIO / "counting.wav").read_bytes()
    verbose = client.audio.transcriptions.create(
        model=MODEL, file=("counting.wav", recording), response_format="verbose_json",
        timestamp_granularities=["segment", "word"])
    assert words(verbose.text) == expected("counting")
    assert 2.9 < verbose.duration < 3.1 and verbose.language == "en"
    assert verbose.segments and verbose.words
    starts = [s.start for s in verbose.segments]
    assert starts == sorted(starts) and all(s.end > s.start for s in verbose.segments)
    assert all(w.end >= w.start for w in verbose.words)
    assert words("".join(v.word for v in verbose.words)) == expected("counting")

    srt = client.audio.transcriptions.create(model=MODEL, file=("c.wav", recording),
                                             response_format="srt")
    cue = r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n"
    assert re.fullmatch(f"({cue}\n?)+", str(srt)), srt
    vtt = client.audio.transcriptions.create(model=MODEL, file=("c.wav", recording),
                                             response_format="vtt")
    assert str(vtt).startswith("WEBVTT\n\n")
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n", str(vtt)), vtt
    text = client.audio.transcriptions.create(model=MODEL, file=("c.wav", recording),
                                              response_format="text")
    assert words(str(text)) == expected("counting")


def three_sentences() -> bytes:
    """The three recordings one after another with a second of silence between: several
    segments, and nothing said twice (a window that repeats itself is decoded again at a
    higher temperature, which samples: not the same text twice)."""
    pause = np.zeros(16000, np.int16)
    parts = [pcm16("hello_world"), pause, pcm16("quick_brown_fox"), pause, pcm16("counting")]
    return _wav(16000, 2, np.concatenate(parts).tobytes())


def test_a_streamed_transcription_joins_to_the_same_text(client: OpenAI) -> None:
    recording = three_sentences()
    deltas: list[str] = []
    done = None
    for event in client.audio.transcriptions.create(
            model=MODEL, file=("long.wav", recording), stream=True):
        if event.type == "transcript.text.delta":
            deltas.append(event.delta)
        else:
            done = event
    whole = client.audio.transcriptions.create(model=MODEL, file=("long.wav", recording))
    assert done is not None and len(deltas) > 1
    assert "".join(deltas).strip() == done.text == whole.text
    assert words(done.text) == [*expected("hello_world"), *expected("quick_brown_fox"),
                                *expected("counting")]


def seed(worker: Worker, recording: bytes, **options: Any) -> httpx.Response:
    """A transcription through the seed API, the audio as base64."""
    return httpx.post(f"{worker.url}/api/inference/{MODEL}", timeout=60, json={
        "inputData": {"audio": base64.b64encode(recording).decode()}, "options": options})


def test_the_seed_api_gives_the_same_text(worker: Worker, client: OpenAI) -> None:
    recording = (AUDIO / "quick_brown_fox.wav").read_bytes()
    answer = seed(worker, recording).json()
    openai = client.audio.transcriptions.create(model=MODEL, file=("fox.wav", recording))
    assert answer["success"] and answer["result"]["text"] == openai.text
    assert answer["result"]["segments"][0]["start"] == 0.0


def _metric(worker: Worker, name: str) -> float:
    text = httpx.get(f"{worker.url}/metrics").text
    found = re.search(rf'^{name}{{model="{MODEL}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_audio_seconds_and_real_time_factor_are_metrics(worker: Worker) -> None:
    before = _metric(worker, "wrk_audio_seconds_total")
    runs = _metric(worker, "wrk_audio_real_time_factor_count")
    assert seed(worker, (AUDIO / "counting.wav").read_bytes()).json()["success"]
    assert 2.9 < _metric(worker, "wrk_audio_seconds_total") - before < 3.1
    assert _metric(worker, "wrk_audio_real_time_factor_count") == runs + 1
    assert 0 < _metric(worker, "wrk_audio_real_time_factor_sum") < runs + 2


def _processes(worker: Worker, itself: bool = True) -> list[psutil.Process]:
    """The worker (unless ``itself`` is false) and every process it started (the
    transcription children)."""
    tree = psutil.Process(worker.proc.pid)
    return [*([tree] if itself else []), *tree.children(recursive=True)]


def _minor_faults(worker: Worker) -> int:
    """Pages the worker's children have faulted in so far (/proc/PID/stat, field 10)."""
    total = 0
    for child in _processes(worker, itself=False):
        try:
            stat = Path(f"/proc/{child.pid}/stat").read_text()
        except OSError:
            continue
        total += int(stat.rsplit(")", 1)[1].split()[7])
    return total


def test_a_child_keeps_its_pages_between_transcriptions(worker: Worker) -> None:
    """The children's allocator keeps freed memory mapped (``whisper.ALLOCATOR``): with
    glibc's defaults every transcription of this recording faults in tens of thousands of
    pages again, each a trip to the kernel."""
    recording = (AUDIO / "quick_brown_fox.wav").read_bytes()

    def transcribe() -> None:
        reply = seed(worker, recording)
        assert reply.json()["success"], reply.text

    transcribe()  # warm: the first one grows the heap
    before = _minor_faults(worker)
    for _ in range(3):
        transcribe()
    faults = _minor_faults(worker) - before
    sys.stdout.write(f"minor page faults in 3 transcriptions: {faults}\n")
    assert faults < 30_000, f"the children faulted in {faults} pages in 3 transcriptions"


def test_translation_is_refused_for_an_english_only_model(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as refused:
        client.audio.translations.create(
            model=MODEL, file=("hello.wav", (AUDIO / "hello_world.wav").read_bytes()))
    assert "English only" in str(refused.value)


def _wav(rate: int, width: int, samples: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setnchannels(1)
        target.setsampwidth(width)
        target.setframerate(rate)
        target.writeframes(samples)
    return out.getvalue()


HOSTILE: dict[str, tuple[bytes, int, str]] = {
    "not audio": (b"this is a text file, not a recording" * 20, 400, "not audio"),
    "empty": (b"", 400, "empty"),
    "truncated header": ((AUDIO / "hello_world.wav").read_bytes()[:30], 400, "not audio"),
    "random bytes": (bytes(np.random.default_rng(3).integers(0, 256, 5000, np.uint8)), 400,
                     "not audio"),
    "header only": (_wav(16000, 2, b""), 400, "no audio"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_audio_gets_a_clear_error(worker: Worker, case: str) -> None:
    data, status, says = HOSTILE[case]
    reply = httpx.post(f"{worker.url}/v1/audio/transcriptions", timeout=60,
                       files={"file": ("x.wav", data)}, data={"model": MODEL})
    assert reply.status_code == status, reply.text
    assert says in reply.json()["error"]["message"]
    assert httpx.get(f"{worker.url}/api/capacity").json()["currentLoad"] == 0


def test_odd_but_real_audio_is_transcribed(worker: Worker) -> None:
    """8-bit and 8 kHz recordings, and a header that claims more data than follows."""
    pcm = pcm16("hello_world")
    eight_bit = _wav(16000, 1, ((pcm >> 8) + 128).astype(np.uint8).tobytes())
    low_rate = _wav(8000, 2, pcm[::2].tobytes())
    lying = bytearray(_wav(16000, 2, pcm.tobytes()))
    assert lying[36:40] == b"data"
    lying[40:44] = (10 ** 9).to_bytes(4, "little")  # the data chunk claims 1 GB
    for data in (eight_bit, low_rate, bytes(lying)):
        reply = httpx.post(f"{worker.url}/v1/audio/transcriptions", timeout=60,
                           files={"file": ("x.wav", data)}, data={"model": MODEL})
        assert reply.status_code == 200, reply.text
        assert words(reply.json()["text"]) == expected("hello_world")


def test_broken_model_files_fail_the_load_and_not_the_worker(tmp_path: Path) -> None:
    """The model loads in a child process: a model.bin that CTranslate2 refuses, or one
    that crashes it, costs a load error, never the worker."""
    source = EXAMPLES / MODEL
    for name, blob in {"truncated": (source / "model.bin").read_bytes()[:1_000_000],
                       "garbage": np.random.default_rng(7).bytes(2_000_000)}.items():
        folder = tmp_path / "repo" / name
        folder.mkdir(parents=True)
        for part in ("model.json", "config.json", "tokenizer.json", "vocabulary.txt"):
            (folder / part).write_bytes((source / part).read_bytes())
        (folder / "model.bin").write_bytes(blob)
    with running_worker(tmp_path / "repo", tmp_path / "w.log") as broken:
        for name in ("truncated", "garbage"):
            reply = httpx.post(f"{broken.url}/api/models/{name}/load", timeout=60)
            assert reply.status_code >= 400, reply.text
            answer = reply.json()
            assert answer["error"] == "ERR_MODEL_LOAD_FAILED", answer
            assert name in answer["message"] and str(tmp_path) not in answer["message"]
        assert httpx.get(f"{broken.url}/health").status_code == 200


def test_too_long_a_recording_is_413(tmp_path_factory: pytest.TempPathFactory) -> None:
    with examples_worker(tmp_path_factory, "speech-short", [MODEL],
                         max_audio_seconds=10) as short:
        reply = httpx.post(f"{short.url}/v1/audio/transcriptions", timeout=60,
                           files={"file": ("x.wav", long_recording(12))},
                           data={"model": MODEL})
    assert reply.status_code == 413 and "maxAudioSeconds" in reply.text


def _stops(worker: Worker, reason: str) -> list[dict[str, Any]]:
    return [line for line in worker.log_lines() if line.get("msg") == "transcription stopped"
            and line.get("reason") == reason]


def _cpu_seconds(worker: Worker) -> float:
    """CPU time of the worker and every process it started (the transcription children)."""
    total = 0.0
    for proc in _processes(worker):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _idle_after_stop(worker: Worker, reason: str) -> float:
    """The worker's own stop time (ms from the stop asked to the child gone), after checking
    that the work really stopped: the worker and its children use next to no CPU for a
    second after (a transcription left running takes a core or more)."""
    stopped = wait_for(f"the {reason}'s stop", lambda: _stops(worker, reason))
    before = _cpu_seconds(worker)
    time.sleep(1.0)
    busy = _cpu_seconds(worker) - before
    sys.stdout.write(f"{reason}: stopped {stopped[-1]['stopMs']} ms after it was asked; "
                     f"CPU in the next second {busy:.3f} s\n")
    assert busy < 0.3, f"the worker kept working after the {reason}: {busy:.2f} CPU-s in 1 s"
    wait_for("a free slot",
             lambda: httpx.get(f"{worker.url}/api/capacity").json()["currentLoad"] == 0)
    return float(stopped[-1]["stopMs"])


def test_a_deadline_and_a_cancel_stop_a_long_recording(worker: Worker) -> None:
    audio = long_recording(60)
    started = time.monotonic()
    late = seed(worker, audio, timeout=1500)
    assert late.status_code == 504 and time.monotonic() - started < 10
    assert _idle_after_stop(worker, "deadline") < 300

    answer: dict[str, Any] = {}

    def run() -> None:
        answer.update(seed(worker, audio, inferenceId="long-talk").json())

    thread = threading.Thread(target=run)
    thread.start()
    wait_for("the long transcription",
             lambda: httpx.get(f"{worker.url}/api/capacity").json()["currentLoad"] == 1)
    time.sleep(0.5)
    assert httpx.post(f"{worker.url}/api/inference/long-talk/cancel").json()["cancelled"]
    thread.join(60)
    assert answer["result"]["finishReason"] == "cancelled", answer
    assert _idle_after_stop(worker, "cancelled") < 300
    # the killed child is replaced by the next request that needs one
    again = seed(worker, (AUDIO / "hello_world.wav").read_bytes())
    assert words(again.json()["result"]["text"]) == expected("hello_world")


async def test_rpc_run_inference_gives_the_same_text(tmp_path: Path) -> None:
    recording = (AUDIO / "hello_world.wav").read_bytes()
    with local_testnet(3) as bootstrap, running_rack(tmp_path, "speech", bootstrap, EXAMPLES,
                                                      preload=[MODEL]) as rack:
        async with RpcClient(bootstrap) as rpc:
            result = await rpc.request(rack.key, "runInference", {
                "modelId": MODEL, "inputData": {"audio": base64.b64encode(recording).decode()}})
    assert words(result["result"]["text"]) == expected("hello_world")
