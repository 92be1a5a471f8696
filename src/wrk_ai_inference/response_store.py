"""Responses kept for ``previous_response_id`` and ``GET /v1/responses/{id}``.

In memory only, bounded by count and age: a worker restart forgets them, and so does
time. What is kept is the response as it was answered and the conversation it ends
(without its instructions, which OpenAI does not carry to the next turn), so a follow-up
needs only its new input.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_RESPONSES = 1000
MAX_AGE_S = 3600.0


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]
    stored_at: float


class ResponseStore:
    def __init__(self, most: int = MAX_RESPONSES, max_age_s: float = MAX_AGE_S) -> None:
        self.most, self.max_age_s = most, max_age_s
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, response_id: str, response: dict[str, Any],
            conversation: list[dict[str, Any]]) -> None:
        self._expire()
        self._items[response_id] = StoredResponse(response, conversation, time.monotonic())
        self._items.move_to_end(response_id)
        while len(self._items) > self.most:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        oldest = time.monotonic() - self.max_age_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.stored_at >= oldest:
                return
            self._items.popitem(last=False)
