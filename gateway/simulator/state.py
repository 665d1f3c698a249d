"""The simulator's state: ``SimState`` (options, routes with their faults, global stats) under ``SIM_STATE``.

All state lives in one ``SimState``, so ``Simulator`` can keep faults and stats
across restarts; it also lets waiting handlers notice a client that left or a stop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final, Literal

from aiohttp import web

from gateway.simulator.faults import SimFaults
from gateway.simulator.options import SimOptions
from gateway.simulator.routes import RouteTable
from gateway.simulator.stats import SimStats

# aiohttp does not cancel a handler when its client leaves, so waiting handlers are
# checked this often; it bounds how late a stalled stream notices a disconnect.
_POLL_INTERVAL: Final = 0.05
Wake = Literal["elapsed", "gone", "stopping"]


def _wake(waiter: asyncio.Future[Wake], why: Wake) -> None:
    if not waiter.done():
        waiter.set_result(why)


class SimState:
    """What one simulator shares between requests: options, routes (with faults), global stats."""

    def __init__(
        self,
        options: SimOptions | None = None,
        faults: SimFaults | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options or SimOptions()
        self.routes = RouteTable(faults or SimFaults(), seed=self.options.seed, limit=self.options.max_routes)
        self.stats = SimStats()  # every chat request, whatever its route
        self.clock = clock
        self.stopping = False
        self.streams: set[asyncio.Transport] = set()  # of open streams, to cut on stop
        self._waiters: dict[asyncio.Future[Wake], web.BaseRequest] = {}

    @property
    def faults(self) -> SimFaults:
        """The faults in force on the default route."""
        return self.routes.default.faults

    @faults.setter
    def faults(self, faults: SimFaults) -> None:
        self.routes.default.faults = faults

    @property
    def rng(self) -> random.Random:
        """The default route's RNG (each route draws from its own)."""
        return self.routes.default.rng

    def reset_stats(self) -> None:
        """Zero the global stats and every route's."""
        self.stats.reset()
        for route in self.routes:
            route.stats.reset()

    async def pause(self, request: web.BaseRequest, seconds: float | None) -> Wake:
        """Wait ``seconds`` (None: forever); end early if the client leaves or we stop."""
        if self.stopping:
            return "stopping"
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Wake] = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _wake, waiter, "elapsed")
        self._waiters[waiter] = request
        try:
            return await waiter
        finally:
            del self._waiters[waiter]
            if timer is not None:
                timer.cancel()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the app runs, one task notices clients that left a waiting handler."""
        self.stopping = False
        watcher = asyncio.create_task(self._watch_clients())
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch_clients(self) -> None:
        while True:
            await asyncio.sleep(_POLL_INTERVAL)
            for waiter, request in list(self._waiters.items()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    _wake(waiter, "gone")

    def drop_streams(self) -> None:
        """Stopping: wake every waiting handler and cut every open stream."""
        self.stopping = True
        for waiter in list(self._waiters):
            _wake(waiter, "stopping")
        for transport in list(self.streams):
            transport.abort()


SIM_STATE: Final = web.AppKey("sim_state", SimState)
