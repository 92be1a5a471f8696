"""OpenAI's audio API: ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``.

A multipart form (``file``, ``model``, ``language``, ``prompt``, ``response_format``,
``temperature``, ``timestamp_granularities[]``, ``stream``) becomes one call of the
``speech-to-text`` task, as the seed API's ``{"audio": <base64>}`` does; the answer is
written as ``json``, ``text``, ``srt``, ``vtt`` or ``verbose_json``, or streamed as
OpenAI's ``transcript.text.delta`` / ``transcript.text.done`` events. A field this worker
does not implement is refused with a 400 naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from fastapi.responses import Response

from ... import bodies
from ...errors import InferenceError
from ...worker import InferenceWorker
from ..responses import JSON
from ..routing import Call, EventStream, Route, Table
from .shared import first_event

_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature",
           "timestamp_granularities[]", "timestamp_granularities", "stream"}


def _invalid(message: str, param: str | None = None) -> InferenceError:
    return InferenceError("ERR_INVALID_REQUEST", message, {"param": param} if param else None)


def _form(content_type: str | None, body: bytes) -> dict[str, list[tuple[bytes, str | None]]]:
    """The form's fields: name -> [(value bytes, filename)], in order."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise _invalid("send the audio as multipart/form-data (file=@recording.wav, "
                       "model=...)", "file")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _invalid("the multipart body cannot be read", "file")
    fields: dict[str, list[tuple[bytes, str | None]]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise _invalid("a form part has no name")
        payload = part.get_payload(decode=True)
        fields.setdefault(name, []).append(
            (payload if isinstance(payload, bytes) else b"", part.get_filename()))
    return fields


def _text_field(fields: dict[str, list[tuple[bytes, str | None]]], name: str
                ) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    try:
        return values[0][0].decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(f"{name} must be UTF-8 text", name) from None


def _request(fields: dict[str, list[tuple[bytes, str | None]]], translate: bool
             ) -> tuple[str, dict[str, Any], dict[str, Any], str, bool, bool]:
    """(model, inputData, options, response format, stream, words) of a form."""
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise _invalid(f"fields this worker does not support: {unknown}", unknown[0])
    files = fields.get("file")
    if not files or files[0][1] is None:
        raise _invalid("file (the recording, as a form file) is required", "file")
    model = _text_field(fields, "model")
    if not model:
        raise _invalid("model is required", "model")
    fmt = _text_field(fields, "response_format") or "json"
    if fmt not in _FORMATS:
        raise _invalid(f"response_format must be one of {list(_FORMATS)}", "response_format")
    granularities = [v.decode("utf-8", "replace") for key in
                     ("timestamp_granularities[]", "timestamp_granularities")
                     for v, _ in fields.get(key, [])]
    if set(granularities) - {"segment", "word"}:
        raise _invalid("timestamp_granularities may hold 'segment' and 'word'",
                       "timestamp_granularities[]")
    words = "word" in granularities
    if granularities and fmt != "verbose_json":
        raise _invalid("timestamp_granularities need response_format verbose_json",
                       "timestamp_granularities[]")
    stream = (_text_field(fields, "stream") or "false").lower() == "true"
    if stream and fmt not in ("json", "text"):
        raise _invalid("a streamed transcription is text: response_format json or text",
                       "stream")
    options: dict[str, Any] = {"task": "translate" if translate else "transcribe",
                               "wordTimestamps": words}
    language = _text_field(fields, "language")
    if language:
        options["language"] = language
    prompt = _text_field(fields, "prompt")
    if prompt:
        options["prompt"] = prompt
    temperature = _text_field(fields, "temperature")
    if temperature:
        try:
            options["temperature"] = float(temperature)
        except ValueError:
            raise _invalid("temperature must be a number", "temperature") from None
    # the file's bytes as they came: base64 is for JSON transports, not worth a round trip
    return model, {"audio": files[0][0]}, options, fmt, stream, words


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _subtitles(segments: list[dict[str, Any]], vtt: bool) -> str:
    cues = []
    for n, segment in enumerate(segments, 1):
        span = (f"{_clock(segment['start'], '.' if vtt else ',')} --> "
                f"{_clock(segment['end'], '.' if vtt else ',')}")
        text = segment["text"].strip()
        cues.append(f"{span}\n{text}\n" if vtt else f"{n}\n{span}\n{text}\n")
    return ("WEBVTT\n\n" if vtt else "") + "\n".join(cues)


def _usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration)}


def _verbose(result: dict[str, Any], words: bool, translate: bool) -> dict[str, Any]:
    segments = [{"id": i, "seek": 0, "start": s["start"], "end": s["end"], "text": s["text"],
                 "tokens": s["tokens"], "temperature": 0.0, "avg_logprob": s["avgLogprob"],
                 "compression_ratio": 0.0, "no_speech_prob": s["noSpeechProb"]}
                for i, s in enumerate(result["segments"])]
    body: dict[str, Any] = {"task": "translate" if translate else "transcribe",
                            "language": result["language"], "duration": result["duration"],
                            "text": result["text"], "segments": segments,
                            "usage": _usage(result["duration"])}
    if words:
        body["words"] = [w for s in result["segments"] for w in s.get("words", [])]
    return body


def _answer(result: dict[str, Any], fmt: str, words: bool, translate: bool) -> Response:
    if fmt == "text":
        return Response(result["text"] + "\n", media_type="text/plain; charset=utf-8")
    if fmt in ("srt", "vtt"):
        return Response(_subtitles(result["segments"], fmt == "vtt"),
                        media_type="text/vtt" if fmt == "vtt" else "application/x-subrip")
    if fmt == "verbose_json":
        return JSON(_verbose(result, words, translate))
    return JSON({"text": result["text"], "usage": _usage(result["duration"])})


async def _deltas(events: AsyncGenerator[dict[str, Any], None]
                  ) -> AsyncGenerator[bytes, None]:
    texts: list[str] = []
    duration = 0.0
    async with contextlib.aclosing(events):
        async for event in events:
            if event["type"] == "segment":
                texts.append(event["text"])
                yield b"data: " + orjson.dumps({"type": "transcript.text.delta",
                                                "delta": event["text"]}) + b"\n\n"
            elif event["type"] == "finish":
                duration = event["duration"]
    yield b"data: " + orjson.dumps({"type": "transcript.text.done",
                                    "text": "".join(texts).strip(),
                                    "usage": _usage(duration)}) + b"\n\n"


async def _audio(worker: InferenceWorker, call: Call, translate: bool) -> Response:
    body = call.body if isinstance(call.body, bytes) else bodies.joined(call.body)
    fields = await asyncio.to_thread(_form, call.header("content-type"), body)
    model, input_data, options, fmt, stream, words = _request(fields, translate)
    if stream:
        events = worker.stream_inference(model, input_data, options)
        await first_event(events)
        return EventStream(_deltas(events))
    answer = await worker.run_inference(model, input_data, options)
    return _answer(answer["result"], fmt, words, translate)


async def _transcriptions(worker: InferenceWorker, call: Call) -> Response:
    return await _audio(worker, call, translate=False)


async def _translations(worker: InferenceWorker, call: Call) -> Response:
    return await _audio(worker, call, translate=True)


_ERRORS = (400, 401, 404, 409, 413, 429, 500, 503, 504)
_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "model"], "properties": {
        "file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
        "language": {"type": "string"}, "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(_FORMATS)},
        "temperature": {"type": "number"}, "stream": {"type": "boolean"},
        "timestamp_granularities[]": {"type": "array", "items": {
            "type": "string", "enum": ["segment", "word"]}}}}}}}}

TABLE = Table("openai", "OpenAI Audio API", (
    Route("POST", "/v1/audio/transcriptions", _transcriptions, summary="Transcribe audio",
          responses=_ERRORS, openapi=_FORM),
    Route("POST", "/v1/audio/translations", _translations,
          summary="Translate audio into English", responses=_ERRORS, openapi=_FORM),
))
