"""Finding the longest prompt prefix some KV cells already hold, without walking every
cached sequence token by token.

Each token list that holds cells (a running sequence's, an idle slot's) keeps chained
hashes of its whole blocks of ``BLOCK`` tokens: the hash of block k covers every token
before its end, so two lists agree on their first k blocks exactly when (barring a
collision) their k-th hashes are equal, and that is monotone in k. A lookup is then a
binary search over the hashes, a walk of at most one block, and one comparison of the
winning prefix in C, which rules a collision out before any cells are reused.
"""

from __future__ import annotations

BLOCK = 32


class PrefixHashes:
    """The chained block hashes of a token list that only grows; ``update`` hashes the
    blocks completed since the last call."""

    __slots__ = ("hashes",)

    def __init__(self) -> None:
        self.hashes: list[int] = []

    def update(self, tokens: list[int]) -> PrefixHashes:
        hashes = self.hashes
        start = len(hashes) * BLOCK
        previous = hashes[-1] if hashes else 0
        while start + BLOCK <= len(tokens):
            previous = hash((previous, *tokens[start:start + BLOCK]))
            hashes.append(previous)
            start += BLOCK
        return self


def shared_prefix(a: list[int], a_hashes: PrefixHashes, b: list[int],
                  b_hashes: PrefixHashes) -> int:
    """How many first tokens ``a`` and ``b`` share (hashes up to date with the lists)."""
    ha, hb = a_hashes.hashes, b_hashes.hashes
    low, high = 0, min(len(ha), len(hb))  # whole blocks known equal / possibly equal
    while low < high:
        middle = (low + high + 1) // 2
        if ha[middle - 1] == hb[middle - 1]:
            low = middle
        else:
            high = middle - 1
    n = min(len(a), len(b))
    i = low * BLOCK
    while i < n and a[i] == b[i]:
        i += 1
    return i


def verified(a: list[int], b: list[int], n: int) -> int:
    """``n`` if the first ``n`` tokens of both really agree (one comparison in C), else 0:
    a hash collision must never reuse cells of another prompt."""
    return n if a[:n] == b[:n] else 0
