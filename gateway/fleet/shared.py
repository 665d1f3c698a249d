"""One process's member of the fleet: the connection, the per-route records, and who handles what.

:class:`SharedHealth` owns the Redis link and hands each kind of fact to its part:
trips and closes (:mod:`gateway.fleet.trips`), probes (:mod:`gateway.fleet.probes`) and
operator overrides (:mod:`gateway.fleet.overrides`), each shared only with processes of the
same route scope (:mod:`gateway.scope`). Local events reach the parts through
each route's event bus; messages from the fleet are checked (:mod:`gateway.fleet.messages`)
and dispatched here. While Redis is unreachable every process decides alone, exactly as
without a fleet; on reconnection the parts re-sync before sharing resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.events import BreakerChanged, ProbeFinished
from gateway.fleet.link import RedisLink
from gateway.fleet.messages import Closed, Keys, Override, OverrideTarget, Probe, Trip, decode
from gateway.fleet.overrides import OverrideSharing
from gateway.fleet.probes import ProbeSharing
from gateway.fleet.share import RouteShare
from gateway.fleet.trips import TripSharing
from gateway.probe_lease import LinkState
from gateway.route_pool import RoutePool

log = logging.getLogger(__name__)

# A process waits at most this long to join the fleet before its first probe (each Redis
# call is bounded far below it; this only guards against a bug keeping the link unsettled).
JOIN_WAIT_MAX_SECONDS = 5.0


class SharedHealth:
    """Publishes local decisions and applies everyone else's, per route."""

    def __init__(
        self,
        routes: RoutePool,
        *,
        link_state: LinkState,
        url: str,
        prefix: str,
        timeout: float,
        probe_interval: float,
        trial_window: float,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[bool], None] = lambda up: None,
        probing: bool = True,
    ) -> None:
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        keys = Keys(prefix)
        self._shares = {route.name: RouteShare(route) for route in routes}
        self._on_state = on_state
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self._probing = probing  # a process that does not probe must not hold a lease others wait on
        self._clock = clock
        self.link = RedisLink(
            url,
            channel=keys.channel,
            timeout=timeout,
            on_message=self._receive,
            on_up=self._resync,
            on_down=self._down,
            state=link_state,  # the one the routes' probe leases read
        )
        self.trips = TripSharing(
            self.link, keys, self.origin, trial_window=trial_window, clock=clock, spawn=self._spawn
        )
        self.probes = ProbeSharing(
            self.link, keys, self.origin, probe_interval=probe_interval, clock=clock, spawn=self._spawn
        )
        self.overrides = OverrideSharing(self.link, keys, self.origin, {route.name: route for route in routes})
        for share in self._shares.values():
            events = share.route.events
            events.subscribe(BreakerChanged, functools.partial(self.trips.breaker_changed, share))
            events.subscribe(ProbeFinished, functools.partial(self.probes.probe_finished, share))
            share.lease.result_arrived()  # a joiner waits for the fleet's results before probing itself

    @property
    def up(self) -> bool:
        """Whether decisions are being shared right now."""
        return self.link.up

    def snapshot(self) -> dict[str, Any]:
        """For /status: whether sharing works, who we are, and per route what is shared, with whom, from where."""
        routes = {}
        opened_by = self.open_periods()
        now = self._clock()
        for name, share in self._shares.items():
            scopes, period = share.route.scopes, share.period
            routes[name] = {
                "upstream_scope": scopes.upstream,
                "egress": scopes.egress.rpartition("/")[2] if scopes.egress else None,
                "path_failures_shared": scopes.egress is not None,
                "probe_lease": self.up and share.lease.held,
                # Why this process probes the route, or does not: it holds the lease, it sits out after its own
                # path failed (the lease is left to peers), or the fleet's results went stale and it probes anyway.
                "probe_sitting_out_seconds": round(max(0.0, share.sit_out_until - now), 1),
                "probe_results_stale": share.lease.results_stale,
                "probes_here": share.lease.may_probe(),
                "open_period": None
                if period is None
                else {
                    "trip_id": period.trip_id,
                    "scope": period.scope,
                    "opened_by": opened_by[name],
                    "shared": period.shared,
                },
            }
        leases = sorted(name for name, share in self._shares.items() if self.up and share.lease.held)
        return {"up": self.up, "origin": self.origin, "probe_leases": leases, "routes": routes}

    def open_periods(self) -> dict[str, str]:
        """Route -> who opened the period it is in (``local`` or ``fleet``), for routes in one."""
        return {
            name: "local" if share.period.origin == self.origin else "fleet"
            for name, share in self._shares.items()
            if share.period is not None
        }

    async def joined(self) -> None:
        """Until the first connection attempt has synced (the fleet's probe results adopted) or failed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(JOIN_WAIT_MAX_SECONDS):
                await self.link.settled.wait()

    def start(self) -> None:
        """Connect and keep the probe leases, in the background."""
        self._on_state(False)
        self.link.start()
        if self._probing:
            shares = list(self._shares.values())
            self._lease_task = asyncio.get_running_loop().create_task(self.probes.keep_leases(shares), name="leases")

    async def stop(self) -> None:
        """Release our probe leases (a peer takes over at once), finish background calls, disconnect."""
        try:
            if self._lease_task is not None:
                self._lease_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._lease_task
            await self.probes.release(list(self._shares.values()))
        except Exception:  # cleanup logs and goes on: the connection must close whatever happened
            log.exception("releasing the probe leases failed")
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.link.stop()

    async def share_override(self, route: str, target: OverrideTarget, mode: str) -> bool:
        """Store and announce an operator mode just applied here; False if Redis is away."""
        return await self.overrides.share(route, target, mode)

    def _receive(self, raw: bytes) -> None:
        message = decode(raw)
        if message is None or message.route not in self._shares:
            return
        share = self._shares[message.route]
        if isinstance(message, Override):
            self.overrides.apply_message(message)  # ours too: Redis's order decides between concurrent commands
        elif isinstance(message, Trip):
            if message.scope not in share.route.scopes:
                return  # another upstream, or a path failure of another egress group
            self.trips.apply_trip(share, message)  # our own too: arrival order names the period
            if message.from_closed and share.lease.held and message.origin != self.origin:
                share.route.prober.trigger()  # live traffic elsewhere says the upstream broke: look now
        elif message.origin == self.origin:
            return
        elif isinstance(message, Closed):
            if message.scope not in share.route.scopes:
                return
            self.trips.apply_closed(share, message)
        elif isinstance(message, Probe):
            self.probes.apply_probe(share, message)

    async def _resync(self) -> None:
        """Connected (again): overrides first (pushing ours), then open periods, then working flags."""
        shares = list(self._shares.values())
        if not (await self.overrides.resync() and await self.trips.resync(shares) and await self.probes.resync(shares)):
            return  # the link is marked down; it will retry with backoff
        self._on_state(True)
        self.probes.wake.set()

    def _down(self) -> None:
        for share in self._shares.values():
            share.lease.hold(False)
        self._on_state(False)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
