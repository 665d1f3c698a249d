"""A deadline on writes to the client: a reader that stops reading is cut, not waited for.

aiohttp's ``StreamResponse.write`` only waits when the transport's buffer is full, that is
when the client has stopped reading; ``write_eof`` always waits for the buffer to drain.
The guard times each write: one check is scheduled per ``write_timeout`` (not per
write, on the process's shared timers of :mod:`gateway.deadlines`), and when it finds a write
pending for too long, or past the request's total deadline, it fires the enclosing
:class:`~gateway.deadlines.Deadline` scope, which cancels the write. A guarded response costs
one scope and a heap entry per check; each write then costs a clock read and two attribute
stores, plus the request's overhead stopwatch (found once per guard, not per write).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from aiohttp import web

from gateway.deadlines import Deadline, timers
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
        self._timers = timers()
        self._write_timeout = write_timeout
        self._total_at = self._loop.time() + max(0.0, total_remaining)
        self._scope = Deadline(None)
        self._since: float | None = None  # loop time the pending write began, None when idle
        self._checking = 0  # the generation of the scheduled check; 0: none scheduled
        self._generation = 0
        self._fired_after: float | None = None
        self._waiting = waiting()  # the request's stopwatch, found once: a write's wait is not the gateway's own time

    async def __aenter__(self) -> Self:
        self._scope.__enter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._checking:
            self._checking = 0
            self._timers.discard()
        try:
            self._scope.__exit__(kind, error, tb)
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
        if not self._checking:
            self._schedule(self._due(self._since))

    def _due(self, since: float) -> float:
        return min(since + self._write_timeout, self._total_at)

    def _schedule(self, when: float) -> None:
        self._generation += 1
        self._checking = self._generation
        self._timers.add(when, self, self._generation)

    def waits_on(self, generation: int) -> bool:
        """Whether the check of ``generation`` is still the scheduled one (for the shared timers)."""
        return generation == self._checking

    def _expire(self, generation: int) -> None:
        """The scheduled check: cut a write pending past its due time, else look again when it is due."""
        if generation != self._checking:
            return
        self._checking = 0
        self._timers.discard()
        since = self._since
        if since is None:
            return  # no write pending: the next write schedules the check again
        now = self._loop.time()
        due = self._due(since)
        if now < due:
            self._schedule(due)
            return
        self._fired_after = now - since
        self._scope.expire_now()  # cancels the blocked write; __aexit__ turns it into ClientStalledError
