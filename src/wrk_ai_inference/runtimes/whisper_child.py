"""The process one Whisper transcription runs in, and the framing both sides speak.

CTranslate2 decodes a 30 s window in one call that nothing can interrupt, so a stop asked
for inside a window would otherwise wait for the window's end (seconds). A transcription
therefore runs in a child process of the worker, which the worker kills to stop it at
once: the CPU is idle and the slot free as soon as the stop is seen. The child holds the
model, reads jobs on stdin and writes its answers on the stdout it was given; everything
else it or its libraries print goes to stderr.

Messages are the sidecar's frames (``framing.py``): a JSON header, and a body that holds
the audio as float32 samples from the worker (nothing the other way). The child ends
when its stdin closes (the worker went away) or when it is killed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, BinaryIO

from .. import framing


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes]:
    """One frame from a blocking stream; EOFError at its end."""
    prefix = stream.read(4)
    if len(prefix) != 4:
        raise EOFError
    total = framing.read_length(prefix)
    frame = stream.read(total)
    if len(frame) != total:
        raise EOFError
    return framing.decode(frame)


class FrameBuffer:
    """The worker's side: bytes as they arrive, whole frames' headers out."""

    def __init__(self) -> None:
        self.data = bytearray()

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(self.data) >= 4:
            end = 4 + framing.read_length(bytes(self.data[:4]))
            if len(self.data) < end:
                break
            out.append(framing.decode(bytes(self.data[4:end]))[0])
            del self.data[:end]
        return out


def _segment(segment: Any, words: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": segment.id, "start": round(float(segment.start), 3),
                           "end": round(float(segment.end), 3), "text": segment.text,
                           "tokens": [int(t) for t in segment.tokens],
                           "avgLogprob": round(float(segment.avg_logprob), 5),
                           "noSpeechProb": round(float(segment.no_speech_prob), 5)}
    if words and segment.words:
        out["words"] = [{"word": w.word, "start": round(float(w.start), 3),
                         "end": round(float(w.end), 3),
                         "probability": round(float(w.probability), 4)}
                        for w in segment.words]
    return out


def _serve(folder: str, compute_type: str, threads: int, out: BinaryIO) -> None:
    import numpy as np
    from faster_whisper import WhisperModel

    try:
        model = WhisperModel(folder, device="cpu", compute_type=compute_type,
                             cpu_threads=threads, num_workers=1)
    except (ValueError, RuntimeError, OSError) as exc:
        out.write(framing.encode({"failed": str(exc).strip().splitlines()[0] if str(exc) else
                         type(exc).__name__}))
        return
    out.write(framing.encode({"ready": True, "multilingual": bool(model.model.is_multilingual)}))
    stdin = sys.stdin.buffer
    while True:
        try:
            job, audio = read_frame(stdin)
        except EOFError:
            return
        samples = np.frombuffer(audio, np.float32)
        try:
            segments, info = model.transcribe(samples, **job["options"])
            for segment in segments:  # each decoded window yields its segments
                out.write(framing.encode({"segment": _segment(segment, job["words"])}))
        except Exception as exc:  # the worker logs it and answers the client
            out.write(framing.encode({"error": f"{type(exc).__name__}: {exc}"}))
            continue
        out.write(framing.encode({"done": {"language": info.language}}))


def _exit_with(parent: int) -> None:
    """Ends the child when the worker is gone, even in the middle of a transcription (its
    stdin closing is only read between two)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main() -> None:
    """``python -m wrk_ai_inference.runtimes.whisper_child FOLDER COMPUTE_TYPE THREADS``"""
    folder, compute_type, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # what libraries print must not break the framing
    _serve(folder, compute_type, threads, out)


if __name__ == "__main__":
    main()
