from __future__ import annotations

import asyncio

import pytest

from wrk_ai_inference.capacity import CapacityTracker
from wrk_ai_inference.errors import InferenceError


async def test_fifo_handoff_and_rejection() -> None:
    cap = CapacityTracker(max_running=1, max_queued=2)
    await cap.acquire(1)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await cap.acquire(5)
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(2)]
    await asyncio.sleep(0.01)
    assert (cap.running, cap.queued) == (1, 2)
    with pytest.raises(InferenceError) as exc:
        await cap.acquire(1)
    assert exc.value.code == "ERR_CAPACITY_EXCEEDED" and exc.value.details["retryAfter"] >= 1
    cap.release()
    await asyncio.sleep(0.01)
    cap.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1] and cap.running == 1
    cap.release()
    assert (cap.running, cap.queued) == (0, 0)


async def test_waiter_timeout_and_cancel_leave_no_trace() -> None:
    cap = CapacityTracker(max_running=1, max_queued=5)
    await cap.acquire(1)
    with pytest.raises(TimeoutError):
        await cap.acquire(0.05)
    task = asyncio.create_task(cap.acquire(5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cap.queued == 0
    cap.release()
    assert cap.running == 0
    await cap.acquire(1)
    assert cap.running == 1
