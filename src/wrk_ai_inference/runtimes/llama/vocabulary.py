"""A model's vocabulary as the model's thread asks about it: every token, between two
decodes, while llama.cpp's other thread waits for the next one (and, once at load, how
many bytes its longest token stands for).

A token's text and whether it ends a generation never change, so each is asked of
llama.cpp once and answered from memory after (at most one entry per token of the
vocabulary). A row of logits is viewed in place through a ctypes array type made once:
``np.ctypeslib.as_array`` builds its pointer type and buffer description again at every
call.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

#: bytes one token's text may take (llama.cpp's longest pieces are a few dozen)
PIECE_BYTES = 256


class Vocabulary:
    def __init__(self, lib: Any, vocab: Any, size: int) -> None:
        self.lib, self.ptr, self.size = lib, vocab, size
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}
        self._buffer = ctypes.create_string_buffer(PIECE_BYTES)
        self._row = ctypes.c_float * size

    def piece(self, token: int) -> bytes:
        """The bytes of ``token``'s text (special tokens as nothing, as llama.cpp renders
        them when not asked to show them)."""
        piece = self._pieces.get(token)
        if piece is None:
            n = self.lib.llama_token_to_piece(self.ptr, token, self._buffer, PIECE_BYTES, 0,
                                              False)
            piece = self._pieces[token] = self._buffer.raw[:max(n, 0)]
        return piece

    def longest_piece(self) -> int:
        """The most bytes one token stands for, special tokens' text included: a text of
        B bytes is at least B / this many tokens, which bounds a prompt before it is
        tokenised. Walks the whole vocabulary (once, at load)."""
        buffer = ctypes.create_string_buffer(PIECE_BYTES)
        piece = self.lib.llama_token_to_piece
        # a piece longer than the buffer answers minus its length
        longest = max((abs(piece(self.ptr, token, buffer, PIECE_BYTES, 0, True))
                       for token in range(self.size)), default=1)
        return max(1, int(longest))

    def ends(self, token: int) -> bool:
        """Whether ``token`` ends a generation (end of text, of a turn, ...)."""
        end = self._ends.get(token)
        if end is None:
            end = self._ends[token] = bool(self.lib.llama_vocab_is_eog(self.ptr, token))
        return end

    def row(self, logits: Any) -> np.ndarray:
        """The logits at ``logits`` (a ``float *`` from llama.cpp), one per token, viewed
        where they lie: valid until the next decode."""
        row: Any = self._row.from_address(ctypes.addressof(logits.contents))
        return np.frombuffer(row, dtype=np.float32)
