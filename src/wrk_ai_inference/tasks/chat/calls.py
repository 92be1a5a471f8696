"""Telling tool calls from text while an answer is generated, one choice at a time.

A client must never get as text what turns out to be a call. So text that could begin
a call (a prefix of the format's trigger, or a code fence) is held back until the next
pieces decide; a call is sent once it is complete, as one event with its name and
arguments. When the whole answer is constrained to calls (``required``, a named tool,
the generic JSON format), nothing is sent until it is parsed.
"""

from __future__ import annotations

import secrets

from ...runtimes.llama.generation import partial_suffix
from .formats import Call, Format, fenced_calls
from .tools import Toolset

Item = tuple[str, object]  # ("text", str) or ("call", Call)


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


class CallStream:
    """Pieces of one choice's text in, text and calls out."""

    def __init__(self, fmt: Format, toolset: Toolset, whole: bool) -> None:
        self.fmt = fmt
        self.names = {t.name for t in toolset.offered}
        # the answer is read whole: constrained to calls, or a format whose calls are
        # told by the answer's start (decided at the first characters that are not blank)
        self.whole = whole
        self.pending = ""
        self._fence = "```"
        self._markers = [m for m in (fmt.trigger, self._fence) if m]
        self._started = False

    def feed(self, piece: str) -> list[Item]:
        self.pending += piece
        if self.whole:
            return []
        if not self._started:  # an answer that opens with JSON may be a bare call
            head = self.pending.lstrip()
            if not head:
                return []
            self._started = True
            if head.startswith(("{", "<|python_tag|>")):
                self.whole = True
                return []
        return self._scan(final=False)

    def close(self) -> list[Item]:
        """The rest, once the choice ended."""
        if self.whole:
            text, calls = self.fmt.parse(self.pending, self.names)
            self.pending = ""
            return self._items(text, calls)
        return self._scan(final=True)

    def _items(self, text: str, calls: list[Call]) -> list[Item]:
        out: list[Item] = [("text", text)] if text else []
        out += [("call", c) for c in calls]
        return out

    def _scan(self, final: bool) -> list[Item]:
        out: list[Item] = []
        while self.pending:
            text = self.pending
            hits = [(text.find(m), m) for m in self._markers]
            found = min(((i, m) for i, m in hits if i >= 0), default=None)
            if found is None:
                keep = 0 if final else partial_suffix(text, self._markers)
                out += self._items(text[:len(text) - keep], [])
                self.pending = text[len(text) - keep:]
                return out
            at, marker = found
            if at:
                out += self._items(text[:at], [])
                self.pending = text = text[at:]
            end = self._block_end(text, marker, final)
            if end is None:
                return out
            block, self.pending = text[:end], text[end:]
            if marker == self._fence:
                calls = fenced_calls(block, self.names)
                out += self._items("", calls) if calls else self._items(block, [])
            else:
                rest, calls = self.fmt.parse(block, self.names)
                out += self._items(rest, calls)
        return out

    def _block_end(self, text: str, marker: str, final: bool) -> int | None:
        """Where the block that ``marker`` opens at 0 ends; None: not yet known."""
        if marker == self._fence:
            closing = text.find(self._fence, len(self._fence))
            if closing >= 0:
                return closing + len(self._fence)
        elif self.fmt.end_tag:
            closing = text.find(self.fmt.end_tag)
            if closing >= 0:
                return closing + len(self.fmt.end_tag)
        return len(text) if final else None
