"""gateway.inflight: tracking chat handlers and the graceful drain."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import ShuttingDownError
from gateway.inflight import InFlightTracker


async def test_track_counts_the_current_task_and_refuses_once_draining() -> None:
    """track() counts the task while the block runs; after begin_shutdown new work is refused."""
    tracker = InFlightTracker()
    with tracker.track():
        assert tracker.active == 1
        tracker.refuse_if_draining()
    assert tracker.active == 0
    tracker.begin_shutdown()
    with pytest.raises(ShuttingDownError):
        tracker.refuse_if_draining()


async def test_drain_waits_for_handlers_that_finish_in_time() -> None:
    """A handler finishing within the grace is waited for, never cancelled."""
    tracker = InFlightTracker()

    async def handler() -> str:
        with tracker.track():
            await asyncio.sleep(0.05)
            return "done"

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    await tracker.drain(1.0)
    assert await task == "done"
    assert not tracker.was_cut(task)


async def test_drain_cuts_the_rest_after_the_grace_and_marks_them() -> None:
    """A handler still running after the grace is cancelled and marked as cut by the drain."""
    tracker = InFlightTracker()
    cut: list[bool] = []

    async def handler() -> None:
        task = asyncio.current_task()
        with tracker.track():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cut.append(tracker.was_cut(task))
                raise

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    await tracker.drain(0.05)
    assert task.cancelled()
    assert cut == [True]
    assert tracker.active == 0
