"""A deadline on writes to the client: a reader that stops reading is cut, not waited for.

aiohttp's ``StreamResponse.write`` only waits when the transport's buffer is full, that is
when the client has stopped reading; ``write_eof`` always waits for the buffer to drain.
The guard times each write: one loop timer is armed per ``write_timeout`` (not per
write), and when it finds a write pending for too long, or past the request's total
deadline, it fires the enclosing ``asyncio.timeout`` scope, which cancels the write.
A guarded response costs one scope and one timer; each write then costs a clock read and
two attribute stores, plus the request's overhead stopwatch (found once per guard, not per write).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from aiohttp import web

from gateway.overhead import waiting


class ClientStalledError(Exception):
    """The client did not take our bytes within the write timeout (or the total deadline)."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"client did not read for {waited:.1f}s")
        self.waited = waited


class ClientWriteGuard:
    """``async with ClientWriteGuard(...) as guard: await guard.write(response, data)``."""

    def __init__(self, *, write_timeout: float, total_remaining: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._write_timeout = write_timeout
        self._total_at = self._loop.time() + max(0.0, total_remaining)
        self._scope = asyncio.timeout(None)
        self._since: float | None = None  # loop time the pending write began, None when idle
        self._timer: asyncio.TimerHandle | None = None
        self._fired_after: float | None = None
        self._waiting = waiting()  # the request's stopwatch, found once: a write's wait is not the gateway's own time

    async def __aenter__(self) -> Self:
        await self._scope.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self._scope.__aexit__(kind, error, tb)
        except TimeoutError:
            if self._fired_after is None:
                raise
            raise ClientStalledError(self._fired_after) from None

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        """Write ``data``; a write that blocks past its deadline ends the ``async with`` block."""
        self._begin()
        with self._waiting:
            await response.write(data)
        self._since = None

    async def write_eof(self, response: web.StreamResponse) -> None:
        """Finish the response (a ``web.Response`` writes its body here); it always waits for the drain."""
        self._begin()
        with self._waiting:
            await response.write_eof()
        self._since = None

    def _begin(self) -> None:
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._due(self._since), self._check)

    def _due(self, since: float) -> float:
        return min(since + self._write_timeout, self._total_at)

    def _check(self) -> None:
        self._timer = None
        since = self._since
        if since is None:
            return  # no write pending: the next write arms the timer again
        now = self._loop.time()
        due = self._due(since)
        if now < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._fired_after = now - since
        self._scope.reschedule(now)  # cancels the blocked write; __aexit__ turns it into ClientStalledError
