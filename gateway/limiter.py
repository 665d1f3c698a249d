"""Concurrency limit on upstream calls with a short, bounded queue wait."""

from __future__ import annotations

import asyncio

from gateway.errors import OverloadedError


class ConcurrencyLimiter:
    """At most ``limit`` calls at once; a caller waits at most ``queue_timeout`` for a slot."""

    def __init__(self, limit: int, *, queue_timeout: float) -> None:
        self.limit = limit
        self._queue_timeout = queue_timeout
        self._semaphore = asyncio.Semaphore(limit)
        self.in_use = 0

    async def acquire(self) -> None:
        """Take a slot or raise :class:`OverloadedError` once the wait is over."""
        if self._semaphore.locked():
            if self._queue_timeout <= 0:
                raise self._overloaded()
            try:
                async with asyncio.timeout(self._queue_timeout):
                    await self._semaphore.acquire()
            except TimeoutError:
                raise self._overloaded() from None
        else:
            await self._semaphore.acquire()
        self.in_use += 1

    def release(self) -> None:
        """Give a slot back."""
        self.in_use -= 1
        self._semaphore.release()

    def _overloaded(self) -> OverloadedError:
        # One second is short enough to recover quickly and long enough not to hammer us.
        return OverloadedError(f"gateway is at its limit of {self.limit} concurrent upstream calls", retry_after=1.0)
