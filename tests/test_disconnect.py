"""The disconnect watch: one shared timer decides which requests are watched."""

from __future__ import annotations

import asyncio
from typing import Any

from wrk_ai_inference.http.disconnect import DisconnectWatch


class Client:
    """An ASGI ``receive`` whose client leaves after ``leaves_after`` seconds (or never)."""

    def __init__(self, leaves_after: float | None) -> None:
        self.leaves_after = leaves_after
        self.asked = 0

    async def receive(self) -> dict[str, Any]:
        self.asked += 1
        if self.leaves_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.leaves_after or 0)
        return {"type": "http.disconnect"}


async def work(seconds: float, done: list[str], name: str) -> str:
    await asyncio.sleep(seconds)
    done.append(name)
    return name


async def test_only_long_requests_are_watched_and_only_the_one_whose_client_left_stops() -> None:
    watch = DisconnectWatch(after_s=0.05)
    done: list[str] = []
    fast, stays, leaves = Client(leaves_after=0.0), Client(None), Client(leaves_after=0.05)
    started = []
    for name, seconds, client in (("fast", 0.01, fast), ("stays", 0.3, stays)):
        started.append(asyncio.create_task(watch.run(work(seconds, done, name), client.receive)))
        await asyncio.sleep(0.02)  # a different due time for each
    started.append(asyncio.create_task(watch.run(work(0.3, done, "leaves"), leaves.receive)))
    results = await asyncio.wait_for(asyncio.gather(*started), 2)

    assert results == ["fast", "stays", None]
    assert done == ["fast", "stays"]  # the left request's work was cancelled, not finished
    assert fast.asked == 0  # ended before 50 ms: never watched
    assert stays.asked == 1 and leaves.asked == 1
    assert not watch._started and watch._timer is None  # nothing left behind
