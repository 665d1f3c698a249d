"""gateway.limiter: at most ``limit`` calls at once, a bounded queue wait, then 429."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import OverloadedError
from gateway.limiter import ConcurrencyLimiter


async def test_slots_are_counted_and_released() -> None:
    """acquire takes a slot, release gives it back; in_use says how many are held."""
    limiter = ConcurrencyLimiter(2, queue_timeout=0)
    await limiter.acquire()
    await limiter.acquire()
    assert limiter.in_use == 2
    with pytest.raises(OverloadedError) as info:
        await limiter.acquire()
    assert (info.value.status, info.value.code, info.value.retry_after) == (429, "gateway_overloaded", 1.0)
    limiter.release()
    await limiter.acquire()
    assert limiter.in_use == 2


async def test_a_waiter_gets_a_slot_freed_within_the_queue_timeout() -> None:
    """A caller waits at most queue_timeout; a slot freed in time is its."""
    limiter = ConcurrencyLimiter(1, queue_timeout=1.0)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limiter.release()
    await asyncio.wait_for(waiter, timeout=1.0)
    assert limiter.in_use == 1


async def test_the_queue_wait_is_bounded() -> None:
    """Nobody frees a slot: the waiter gets 429 after queue_timeout, holding nothing."""
    limiter = ConcurrencyLimiter(1, queue_timeout=0.05)
    await limiter.acquire()
    with pytest.raises(OverloadedError):
        await limiter.acquire()
    assert limiter.in_use == 1
