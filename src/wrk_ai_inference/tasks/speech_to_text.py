"""Task ``speech-to-text``: audio in, text with timed segments out, as a stream of segments.

It keeps the streaming contract (``tasks.base.StreamingTask``) that text generation keeps,
so admission, deadlines, ``cancel``, disconnects, history and metrics are the engine's:
``request`` checks the options on the loop, ``prepare`` decodes the audio after admission
on a helper thread under the deadline (PyAV: WAV, FLAC, MP3, OGG/Opus, WebM, M4A, ...,
resampled to 16 kHz mono, stopped as soon as it passes ``maxAudioSeconds``), and the
model's own thread has a child process transcribe, handing over each segment as it is
made. A long recording answers progressively; a stop kills the child (``runtimes/whisper.py``
says why), so it lands at once, inside a 30 s window too.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InferenceError
from ..logs import get_logger, request_id_var
from ..models.spec import ModelSpec
from ..runtimes.whisper import WhisperSession
from .base import StreamingTask

log = get_logger("speech")

SAMPLE_RATE = 16_000
#: a choice's "finish reason" when the recording was transcribed to its end
DONE = "stop"


def _bad(message: str, **details: Any) -> InferenceError:
    return InferenceError("ERR_INVALID_INPUT", message, details)


@dataclass(frozen=True)
class Decoding:
    """How the model decodes (faster-whisper's options); ``n`` is the engine's count of
    answers, always one here."""

    temperature: float = 0.0
    beam_size: int = 5
    n: int = 1


@dataclass
class TranscriptionRequest:
    audio: str | bytes  # base64 from JSON transports, decoded by ``prepare``; or the file
    language: str | None
    prompt: str | None
    words: bool
    sampling: Decoding
    translate: bool = False  # into English, rather than in the language spoken
    chat: bool = False


@dataclass
class Audio:
    """What ``prepare`` makes: 16 kHz mono samples (``tokens``: the engine's name for what
    a job starts with) and no grammar."""

    tokens: np.ndarray
    grammar: None = None


@dataclass
class Transcription:
    """One request on the model's thread: started with its audio, stopped by the loop."""

    request: TranscriptionRequest
    deliver: Any
    request_id: str = "-"
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    stop_reason: str | None = None
    stop_asked: float = 0.0  # perf_counter() when the stop was asked for

    def start_with(self, audio: np.ndarray, grammar: None) -> None:
        self.audio = audio

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_asked = time.perf_counter()
            self.stop_reason = reason


def decode(data: bytes, max_seconds: float) -> np.ndarray:
    """Any audio PyAV reads, as float32 samples at 16 kHz mono; refused as soon as it
    passes ``max_seconds`` (a header's duration is not trusted: the samples are counted)."""
    import av

    if not data:
        raise _bad("the audio is empty")
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    count = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise _bad("the file has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    count += samples.size
                    if count > limit:
                        raise InferenceError(
                            "ERR_PAYLOAD_TOO_LARGE",
                            f"the recording is longer than maxAudioSeconds ({max_seconds:g} s)",
                            {"maxAudioSeconds": max_seconds})
                    chunks.append(samples)
    except InferenceError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise _bad("the file is not audio this worker can decode (WAV, FLAC, MP3, OGG, "
                   "WebM, M4A, ...)") from exc
    if count == 0:
        raise _bad("the file holds no audio samples")
    return np.concatenate(chunks).astype(np.float32) / 32768.0


#: temperature 0 means what it means in OpenAI's API (and Whisper's own decoder): greedy
#: first, and a window whose text repeats itself or is unlikely is decoded again hotter
FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _temperatures(decoding: Decoding) -> float | tuple[float, ...]:
    return FALLBACK if decoding.temperature == 0 else decoding.temperature


class SpeechToText(StreamingTask):
    name = "speech-to-text"

    def __init__(self, spec: ModelSpec, session: WhisperSession, model_id: str,
                 max_audio_s: float) -> None:
        self.spec = spec
        self.session = session
        self.model_id = model_id
        self.max_audio_s = max_audio_s

    # ---- the streaming contract ------------------------------------------------------
    def request(self, data: Any, options: dict[str, Any]) -> TranscriptionRequest:
        if not isinstance(data, dict) or not isinstance(data.get("audio"), str | bytes):
            raise _bad('inputData must be {"audio": "<base64 of an audio file>"}')
        unknown = set(data) - {"audio"}
        known = {"timeout", "inferenceId", "language", "prompt", "temperature",
                 "wordTimestamps", "beamSize", "task"}
        unknown |= set(options) - known
        if unknown:
            raise InferenceError("ERR_INVALID_REQUEST", f"unknown field(s) {sorted(unknown)}; "
                                 f"options are {sorted(known)}")
        language = options.get("language")
        if language is not None and (not isinstance(language, str)
                                     or not 2 <= len(language) <= 8):
            raise _bad("language must be an ISO 639-1 code such as 'en'")
        if language and not self.session.multilingual and language != "en":
            raise _bad(f"model '{self.model_id}' knows English only; language {language!r} "
                       "cannot be transcribed")
        prompt = options.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > 2000):
            raise _bad("prompt must be a string of at most 2000 characters")
        temperature = options.get("temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
                or not 0 <= temperature <= 1:
            raise _bad("temperature must be a number from 0 to 1")
        beam = options.get("beamSize", 5)
        if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= 10:
            raise _bad("beamSize must be an integer from 1 to 10")
        words = options.get("wordTimestamps", False)
        if not isinstance(words, bool):
            raise _bad("wordTimestamps must be true or false")
        job = options.get("task", "transcribe")
        if job not in ("transcribe", "translate"):
            raise _bad("task must be 'transcribe' or 'translate'")
        if job == "translate" and not self.session.multilingual:
            raise InferenceError("ERR_INVALID_REQUEST",
                                 f"model '{self.model_id}' knows English only: it transcribes "
                                 "English and cannot translate; use a multilingual model")
        return TranscriptionRequest(data["audio"], language or None, prompt, words,
                                    Decoding(float(temperature), beam), job == "translate")

    def prepare(self, request: TranscriptionRequest) -> Audio:
        raw = request.audio
        if isinstance(raw, str):
            try:
                raw = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _bad("audio must be base64") from exc
        return Audio(decode(raw, self.max_audio_s))

    def generation(self, request: TranscriptionRequest, deliver: Any) -> Transcription:
        return Transcription(request, deliver, request_id_var.get() or "-")

    def shaper(self, request: TranscriptionRequest) -> SegmentShaper:
        return SegmentShaper()

    def collector(self) -> SegmentCollector:
        return SegmentCollector()

    def submit(self, job: Transcription) -> None:
        self.session.thread.submit(self._transcribe, job)

    # ---- on the model's thread -------------------------------------------------------
    def _transcribe(self, job: Transcription) -> None:
        request = job.request
        made = 0

        def segment(view: dict[str, Any]) -> None:
            nonlocal made
            made += len(view["tokens"])
            job.deliver([("delta", 0, view["text"], view)])

        english = None if self.session.multilingual else "en"
        options = {"language": request.language or english, "initial_prompt": request.prompt,
                   "temperature": _temperatures(request.sampling),
                   "beam_size": request.sampling.beam_size,
                   "word_timestamps": request.words,
                   "task": "translate" if request.translate else "transcribe",
                   "vad_filter": False, "condition_on_previous_text": True}
        seconds = job.audio.size / SAMPLE_RATE
        try:
            started = time.perf_counter()
            done = self.session.transcribe(job.audio, options, request.words,
                                           lambda: job.stop_reason is not None, segment)
            took = time.perf_counter() - started
            reason = job.stop_reason or DONE
            job.deliver([*([("media", seconds, took)] if done is not None else []),
                         ("finish", 0, reason, made, {
                             "language": (done or {}).get("language",
                                                          request.language or english),
                             "duration": round(seconds, 3)}),
                         ("end", job.stop_reason, made)])
            if job.stop_reason is not None:
                log.info("transcription stopped", extra={
                    "modelId": self.model_id, "requestId": job.request_id,
                    "reason": job.stop_reason,
                    "stopMs": round((time.perf_counter() - job.stop_asked) * 1000, 2)})
        except Exception:  # the thread must always answer, or the slot stays held
            log.exception("transcription failed", extra={"modelId": self.model_id,
                                                         "requestId": job.request_id})
            job.deliver([("error", InferenceError("ERR_INFERENCE_FAILED",
                                                  "the runtime failed on this audio"))])


class SegmentShaper:
    """The model thread's events as the ones clients get: a ``segment`` per segment."""

    def delta(self, index: int, text: str, segment: dict[str, Any]
              ) -> list[dict[str, Any]]:
        return [{"type": "segment", "index": index, "text": text, "segment": segment}]

    def finish(self, index: int, reason: str, info: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "finish", "index": index, "finishReason": reason, **info}]


class SegmentCollector:
    """A transcription's events as one answer (seed API, RPC, non-streamed OpenAI)."""

    def __init__(self) -> None:
        self.inference_id = ""
        self.segments: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.reason = DONE

    def add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            self.inference_id = event["inferenceId"]
        elif kind == "segment":
            self.segments.append(event["segment"])
        elif kind == "finish":
            self.reason = event["finishReason"]
            self.info = {"language": event["language"], "duration": event["duration"]}
        elif kind == "end" and event.get("finishReason"):
            self.reason = event["finishReason"]

    def result(self) -> dict[str, Any]:
        return {"text": "".join(s["text"] for s in self.segments).strip(), **self.info,
                "segments": self.segments, "finishReason": self.reason}
