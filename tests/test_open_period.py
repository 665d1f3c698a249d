"""gateway/open_period.py: period lengths, growth and caps, adopted periods, and the timer that ends one."""

from __future__ import annotations

import asyncio
import time

from gateway.open_period import OpenPeriod
from tests.clock_support import FakeClock


def _period(clock: FakeClock, ended: list[float] | None = None) -> OpenPeriod:
    return OpenPeriod(
        reset_timeout=10.0,
        multiplier=2.0,
        reset_max=25.0,
        clock=clock,
        on_end=lambda: (ended if ended is not None else []).append(clock()),
    )


def test_failed_trials_grow_the_period_up_to_the_cap_and_a_close_resets_it() -> None:
    """10 s, then 20 s, then 25 s (capped); reset() starts again from 10 s."""
    clock = FakeClock()
    period = _period(clock)
    lengths = []
    for grow in (False, True, True):
        period.start(grow=grow)
        lengths.append(period.until - clock() if period.until is not None else None)
        period.end()
    assert lengths == [10.0, 20.0, 25.0]
    period.reset()
    period.start(grow=False)
    assert period.remaining() == 10.0


def test_remaining_and_over_follow_the_clock() -> None:
    """remaining() counts down to 0 and over() turns true exactly at the end."""
    clock = FakeClock()
    period = _period(clock)
    assert (period.remaining(), period.over()) == (0.0, False)
    period.start(grow=False)
    clock.advance(9.5)
    assert (period.remaining(), period.over()) == (0.5, False)
    clock.advance(0.5)
    assert (period.remaining(), period.over()) == (0.0, True)


def test_an_adopted_period_keeps_its_length_within_our_bounds() -> None:
    """Another process's length below reset_timeout or above reset_max is brought within them."""
    clock = FakeClock()
    period = _period(clock)
    period.adopt(remaining=3.0, duration=1.0)
    assert (period.duration, period.until) == (10.0, None)  # no period runs: only the length is kept
    period.adopt(remaining=3.0, duration=1e9)
    assert period.duration == 25.0
    period.start(grow=False, length=3.0)
    period.adopt(remaining=7.0, duration=25.0)  # a running period runs on for the new remainder
    assert period.remaining() == 7.0


async def test_the_timer_ends_the_period_without_anyone_reading_the_clock() -> None:
    """On a running loop, on_end is called when the period's time is up."""
    ended: list[float] = []
    period = OpenPeriod(
        reset_timeout=0.05, multiplier=1.0, reset_max=1.0, clock=time.monotonic, on_end=lambda: ended.append(1.0)
    )
    period.start(grow=False)
    await asyncio.sleep(0.2)
    assert ended == [1.0]
    period.start(grow=False)
    period.stop()  # shutdown: the timer never fires
    await asyncio.sleep(0.1)
    assert ended == [1.0]
