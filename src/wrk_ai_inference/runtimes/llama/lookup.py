"""Prompt-lookup drafts for speculative decoding: no second model.

A sequence's history (its prompt, then every token it generated) is indexed by its
n-grams, each pointing at the token that followed its latest occurrence. When the last
n tokens generated occurred before, the tokens that followed them then are the draft:
an answer that copies from its prompt (a rewrite, an edit, an extraction) is drafted
many tokens at a time, and the model checks a whole draft in one decode. Greedy only:
a drafted token is kept exactly when it is the token the model picks there, so the
answer is the one it gives without drafts.

On a CPU a batch of a few rows costs much more than one (one row has a kernel of its own:
measured here, 2 rows 2.4 times one, 17 rows 6 times), so a draft pays only when most of
a long one is taken. A sequence therefore drafts the most tokens it may, and only while
the model has been taking a good share of them (a running mean of accepted tokens per
draft at or above ``TAKE_SHARE`` of the most); below, it rests, for twice as long each
time the next try fails, so an answer that copies nothing pays next to nothing.
"""

from __future__ import annotations

NGRAM = 4
#: the share of a full draft the model must be taking for drafting to go on
TAKE_SHARE = 0.4
#: weight of the latest draft in the running mean of accepted tokens
WEIGHT = 0.5
#: steps without drafting after the first failed stretch, doubled per failure after it
FIRST_REST = 32
LONGEST_REST = 1024


class PromptLookup:
    def __init__(self, prompt: list[int], most: int) -> None:
        self.history = list(prompt)
        self.most = most
        self.enough = max(1.0, TAKE_SHARE * most)
        self.taken = self.enough  # running mean of accepted tokens per draft
        self.resting = 0
        self.rest = FIRST_REST
        self.drafted = 0  # tokens drafted, over the sequence's life
        self.accepted = 0  # of them, those the model picked
        self._next: dict[tuple[int, ...], int] = {}
        for end in range(NGRAM, len(self.history)):
            self._next[tuple(self.history[end - NGRAM:end])] = end

    def append(self, token: int) -> None:
        """A token the sequence emitted; the n-gram before it now has a follower."""
        history = self.history
        if len(history) >= NGRAM:
            self._next[tuple(history[-NGRAM:])] = len(history)
        history.append(token)

    def draft(self, room: int) -> list[int]:
        """Up to ``most`` tokens (and ``room``) that followed the latest earlier occurrence
        of the last n-gram; none while resting."""
        if self.resting:
            self.resting -= 1
            return []
        if room <= 0 or len(self.history) < NGRAM:
            return []
        at = self._next.get(tuple(self.history[-NGRAM:]))
        if at is None:
            return []
        return self.history[at:at + min(self.most, room)]

    def judged(self, drafted: int, accepted: int) -> None:
        """How the model judged the last draft."""
        self.drafted += drafted
        self.accepted += accepted
        # a short draft taken whole (the end of what matched) says nothing against drafting
        seen = self.most if accepted == drafted else accepted
        self.taken = (1 - WEIGHT) * self.taken + WEIGHT * seen
        if self.taken >= self.enough:
            self.rest = FIRST_REST
            return
        self.resting = self.rest
        self.rest = min(LONGEST_REST, self.rest * 2)
        self.taken = self.enough  # after the rest, one draft decides again
