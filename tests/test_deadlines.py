"""gateway.deadlines: asyncio.timeout's semantics on one shared loop timer."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

from gateway.deadlines import _SLACK, Deadline, _Timers, timers


async def test_an_expired_deadline_raises_timeout_error_near_its_time() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError), Deadline(0.05):
        await asyncio.sleep(5)
    assert 0.04 <= time.monotonic() - started < 2.0


async def test_a_scope_left_in_time_never_cancels_its_task_later() -> None:
    with Deadline(0.05) as deadline:
        await asyncio.sleep(0)
    assert deadline.when is None
    await asyncio.sleep(0.1)  # past the old time: nothing fires
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def guarded() -> None:
        with Deadline(10):
            await asyncio.sleep(10)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.01)
    task.cancel()  # the client went away: not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_that_arrives_with_the_expiry_stays_a_cancel() -> None:
    """Like asyncio.timeout: when somebody else also cancelled, the scope does not swallow it."""
    seen: list[str] = []
    scopes: list[Deadline] = []

    async def guarded() -> None:
        try:
            with Deadline(10) as deadline:
                scopes.append(deadline)
                await asyncio.sleep(10)
        except TimeoutError:
            seen.append("timeout")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.01)
    deadline = scopes[0]
    deadline._expire(deadline._generation)  # the deadline fires...
    task.cancel()  # ...and the client leaves before the task runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


async def test_reschedule_moves_the_deadline_and_none_disables_it() -> None:
    loop = asyncio.get_running_loop()
    moved: list[float] = []

    async def moved_twice() -> None:
        with Deadline(0.02) as deadline:
            deadline.reschedule(None)
            await asyncio.sleep(0.06)  # the first time passed: nothing happened
            moved.append(loop.time() + 0.02)
            deadline.reschedule(moved[0])
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await moved_twice()
    assert loop.time() >= moved[0]


async def test_reschedule_raises_timeout_error_on_leaving() -> None:
    async def expired_at_once() -> None:
        with Deadline(None) as deadline:
            deadline.expire_now()
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await expired_at_once()


async def test_nested_deadlines_each_report_their_own_expiry() -> None:
    inner_fired: list[bool] = []

    async def outer_expires() -> None:
        with Deadline(0.08):
            try:
                with Deadline(5):
                    await asyncio.sleep(5)
            except TimeoutError:
                inner_fired.append(True)

    with pytest.raises(TimeoutError):
        await outer_expires()
    assert not inner_fired  # the outer one expired: the inner scope let the cancel through

    with Deadline(5):
        with pytest.raises(TimeoutError), Deadline(0.02):
            await asyncio.sleep(5)
        await asyncio.sleep(0)  # the outer scope is untouched


async def test_concurrent_deadlines_fire_in_their_order() -> None:
    fired: list[int] = []

    async def wait(index: int, seconds: float) -> None:
        try:
            with Deadline(seconds):
                await asyncio.sleep(5)
        except TimeoutError:
            fired.append(index)

    await asyncio.gather(wait(3, 0.09), wait(1, 0.03), wait(2, 0.06), wait(0, 0.0))
    assert fired == [0, 1, 2, 3]


async def test_one_loop_timer_serves_many_scopes(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return real_call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    for _ in range(200):
        with Deadline(30):
            await asyncio.sleep(0)
    assert len(armed) <= 1  # asyncio.timeout would have armed 200


async def test_the_heap_stays_bounded_by_the_deadlines_in_flight() -> None:
    shared = timers()
    for _ in range(5_000):
        with Deadline(60):  # a long limit left early: its entry is dead until compacted
            pass
    assert len(shared._heap) <= 2 * shared._live + _SLACK + 1
    assert shared._live == 0


async def test_a_deadline_needs_a_task() -> None:
    deadline = Deadline(1)
    loop = asyncio.get_running_loop()
    result: list[BaseException] = []

    def outside_a_task() -> None:
        try:
            deadline.__enter__()
        except RuntimeError as exc:
            result.append(exc)

    loop.call_soon(outside_a_task)
    await asyncio.sleep(0.01)
    assert result
    assert "running task" in str(result[0])


# -- regressions from the review of the first landing ---------------------------------------------


async def test_a_deadline_added_when_the_heap_compacts_still_fires() -> None:
    """The add that triggered a compaction pushed into the abandoned list: that deadline never fired."""
    shared = timers()
    while len(shared._heap) <= 2 * shared._live + _SLACK:  # dead entries until the next add compacts
        with Deadline(60):
            pass
    started = time.monotonic()
    with pytest.raises(TimeoutError), Deadline(0.05):
        await asyncio.sleep(3)
    assert time.monotonic() - started < 1.5


class _Dead:
    """An owner that waits on nothing: its entries are dead from the start."""

    def waits_on(self, generation: int) -> bool:
        return False

    def _expire(self, generation: int) -> None:
        raise AssertionError("a dead entry never fires")


_DEAD = _Dead()


class _Rescheduling:
    """A timers owner whose expiry adds another entry, as the write guard's check does."""

    def __init__(self, owner_of: Any) -> None:
        self.timers = owner_of
        self.generation = 1
        self.fired_at: list[float] = []

    def waits_on(self, generation: int) -> bool:
        return generation == self.generation

    def _expire(self, generation: int) -> None:
        if generation != self.generation:
            return
        self.timers.discard()
        self.fired_at.append(asyncio.get_running_loop().time())
        if len(self.fired_at) == 1:
            # Enough dead entries that this add compacts the heap while the timers are firing.
            for _ in range(_SLACK + 2 * self.timers._live + 8):
                self.timers.add(asyncio.get_running_loop().time() + 60, _DEAD, 0)
                self.timers.discard()
            self.generation += 1
            self.timers.add(asyncio.get_running_loop().time() + 0.05, self, self.generation)


async def test_an_entry_added_by_an_expiry_fires_on_time_even_when_that_add_compacts() -> None:
    shared = timers()
    loop = asyncio.get_running_loop()
    with Deadline(30):  # a live entry far away: the old heap's top after the compaction
        owner = _Rescheduling(shared)
        began = loop.time()
        shared.add(began + 0.02, owner, owner.generation)
        for _ in range(100):
            if len(owner.fired_at) == 2:
                break
            await asyncio.sleep(0.02)
    assert len(owner.fired_at) == 2
    assert owner.fired_at[1] - began < 1.5  # on time, not when the stale 30 s entry came due


def test_under_uvloop_an_expiry_wakes_the_timers_a_few_times_not_hundreds(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop's clock moves in milliseconds: a timer may run just before its time reads as reached."""
    import uvloop

    fires = [0]
    real_fire = _Timers._fire

    def counting_fire(self: _Timers) -> None:
        fires[0] += 1
        real_fire(self)

    monkeypatch.setattr(_Timers, "_fire", counting_fire)
    worst: list[int] = []

    async def expiries() -> None:
        for index in range(20):
            fires[0] = 0
            with pytest.raises(TimeoutError), Deadline(0.0104 + index * 0.00037):
                await asyncio.sleep(1)
            worst.append(fires[0])

    uvloop.run(expiries())
    assert max(worst) <= 2, worst


def test_loops_in_threads_keep_their_own_timers() -> None:
    errors: list[BaseException] = []

    async def deadlines() -> None:
        for _ in range(200):
            with Deadline(5):
                await asyncio.sleep(0)
        with pytest.raises(TimeoutError), Deadline(0.01):
            await asyncio.sleep(1)

    def run() -> None:
        try:
            for _ in range(3):
                asyncio.run(deadlines())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: shared state would show its races
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors


async def test_a_deadline_is_entered_once() -> None:
    deadline = Deadline(5)
    with deadline:
        pass
    with pytest.raises(RuntimeError, match="entered once"), deadline:
        pass
