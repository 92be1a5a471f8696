"""Telling tool calls from text while an answer is generated, one choice at a time.

A client must never get as text what turns out to be a call. So text that could begin
a call (a prefix of the format's trigger, or a code fence) is held back until the next
pieces decide. Where a grammar writes the calls (a required or named tool, the generic
JSON format, or, under ``auto``, everything from the format's trigger on), a call is
announced as soon as its name is written and its arguments follow piece by piece as
the model writes them, as OpenAI streams them: the grammar guarantees that what began
as a call ends as one. Calls written without a grammar (in a code fence, as bare JSON)
are only known once parsed, and are sent whole.
"""

from __future__ import annotations

import json
import re
import secrets

from ...runtimes.llama.generation import partial_suffix
from .formats import Call, Format, fenced_calls
from .tools import Toolset

#: ("text", str); ("open", the tool's name): a call begins; ("arguments", str): the next
#: piece of its arguments; ("call", Call): a whole call, the open one where one is open
Item = tuple[str, object]


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


_NAME_KEY = '"name"'  # what a call object opens with


class ArgumentsReader:
    """Finds the calls in text a grammar writes, ``{"name": ..., "<key>": {...}}`` (the
    grammar puts the name first), passes each one's arguments on as they grow and the
    call once they close. Each character is scanned once; between calls only the text
    from the last ``{`` on is looked at again, while it may still open a call (a tool's
    name has no brace, so an opening not yet whole starts there)."""

    def __init__(self, names: set[str], key: str) -> None:
        self._names = names
        self._opening = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"'
                                   + re.escape(key) + r'"\s*:\s*(?=\{)')
        self._at = 0  # where the next read starts
        self._inside = False  # in an open call's arguments
        self._depth = 0
        self._string = self._escaped = False
        self.opened = 0  # calls begun
        self._name = self._arguments = ""  # the open call's

    def read(self, text: str) -> list[Item]:
        """What ``text`` (the region so far, grown since the last read) adds."""
        out: list[Item] = []
        while True:
            if not self._inside and not self._open(text, out):
                return out
            start = end = self._at
            while end < len(text) and self._inside:
                char = text[end]
                end += 1
                if self._string:
                    if self._escaped:
                        self._escaped = False
                    elif char == "\\":
                        self._escaped = True
                    elif char == '"':
                        self._string = False
                elif char == '"':
                    self._string = True
                elif char in "{[":
                    self._depth += 1
                elif char in "}]":
                    self._depth -= 1
                    self._inside = self._depth > 0
            self._at = end
            if end > start:
                self._arguments += text[start:end]
                out.append(("arguments", text[start:end]))
            if self._inside:
                return out
            out.append(("call", Call(self._name, self._arguments)))

    def cut(self) -> list[Item]:
        """The open call, if one is open, as far as it was written (the answer ended in
        its arguments: its length, a stop string)."""
        if not self._inside:
            return []
        self._inside = False
        return [("call", Call(self._name, self._arguments))]

    def _open(self, text: str, out: list[Item]) -> bool:
        while True:
            found = self._opening.search(text, self._at)
            if found is None:  # only an opening not yet whole may still come, at the last {
                last = text.rfind("{", self._at)
                head = text[last + 1:].lstrip()[:len(_NAME_KEY)] if last >= 0 else "-"
                self._at = last if _NAME_KEY.startswith(head) else len(text)
                return False
            self._at = found.end()
            try:
                name = json.loads(f'"{found.group(1)}"')
            except ValueError:
                continue
            if name in self._names:
                self.opened += 1
                self._name, self._arguments, self._inside = name, "", True
                self._depth, self._string, self._escaped = 0, False, False
                out.append(("open", name))
                return True


class CallStream:
    """Pieces of one choice's text in, text and calls out. ``constrained``: a grammar
    writes the calls (the whole answer where ``whole``, else from the trigger on)."""

    def __init__(self, fmt: Format, toolset: Toolset, whole: bool,
                 constrained: bool = False) -> None:
        self.fmt = fmt
        self.names = {t.name for t in toolset.offered}
        # the answer is read whole: constrained to calls, or a format whose calls are
        # told by the answer's start (decided at the first characters that are not blank)
        self.whole = whole
        self.pending = ""
        self._fence = "```"
        self._markers = [m for m in (fmt.trigger, self._fence) if m]
        self._started = False
        self._streams_blocks = constrained and not whole  # calls after a trigger stream
        # the whole answer's calls stream from its start
        self._reader = self._new_reader() if whole and constrained else None

    def _new_reader(self) -> ArgumentsReader:
        return ArgumentsReader(self.names, self.fmt.arguments_key)

    def feed(self, piece: str) -> list[Item]:
        self.pending += piece
        if self.whole:
            return self._reader.read(self.pending) if self._reader is not None else []
        if not self._started:  # an answer that opens with JSON may be a bare call
            head = self.pending.lstrip()
            if not head:
                return []
            self._started = True
            if head.startswith(("{", "<|python_tag|>")):
                self.whole = True  # written without a grammar: parsed once it ends
                return []
        return self._scan(final=False)

    def close(self) -> list[Item]:
        """The rest, once the choice ended."""
        if self.whole:
            text, calls = self.fmt.parse(self.pending, self.names)
            self.pending = ""
            return self._settle(text, calls)
        return self._scan(final=True)

    def _items(self, text: str, calls: list[Call]) -> list[Item]:
        out: list[Item] = [("text", text)] if text else []
        out += [("call", c) for c in calls]
        return out

    def _settle(self, text: str, calls: list[Call]) -> list[Item]:
        """A region's end: its text and calls, less the calls already streamed (whose
        region is calls only); a call cut short ends with what was written of it."""
        reader, self._reader = self._reader, None
        if reader is None or not reader.opened:
            return self._items(text, calls)
        return reader.cut() + self._items("", calls[reader.opened:])

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
            if marker != self._fence and self._streams_blocks and self._reader is None:
                self._reader = self._new_reader()  # the block starts at 0 of ``pending``
            end = self._block_end(text, marker, final)
            if end is None:
                return out + (self._reader.read(text) if self._reader is not None else [])
            block, self.pending = text[:end], text[end:]
            if marker == self._fence:
                calls = fenced_calls(block, self.names)
                out += self._items("", calls) if calls else self._items(block, [])
            else:
                if self._reader is not None:
                    out += self._reader.read(block)
                out += self._settle(*self.fmt.parse(block, self.names))
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
