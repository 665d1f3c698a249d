"""One prober per route scope for the whole fleet: the probe lease, and its results shared by scope.

The lease (one per upstream scope, :mod:`gateway.scope`) is taken or renewed by one script every
third of a probe interval and expires after two thirds, so a holder that dies is replaced within
one interval; a holder that reconnects keeps its own lease, and stopping releases only a lease this
process holds. The holder publishes each :class:`Probe` and stores the working flag it reached,
which processes that (re)join adopt instead of starting from "working". A result is shared in the
scope its outcome is shared in: a success or an upstream failure with the whole upstream scope, a
failure that may belong to the holder's path (a block, a rate limit...) only within its egress
group, and not at all without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as redis

from gateway.events import ProbeFinished
from gateway.fleet import scripts
from gateway.fleet.messages import Keys, Probe, encode, probe_fields, stored_working
from gateway.fleet.share import RouteShare
from gateway.probe_lease import renew_period

if TYPE_CHECKING:
    from gateway.fleet.link import RedisLink

log = logging.getLogger(__name__)


class ProbeSharing:
    """Keeps the probe leases, publishes our probes, applies the holders' results."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        origin: str,
        *,
        probe_interval: float,
        clock: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self._link = link
        self._keys = keys
        self._origin = origin
        self._interval = probe_interval
        self._period = renew_period(probe_interval)
        self._lease_ttl_ms = max(math.ceil(self._period * 2000), 100)
        self._working_ttl_ms = math.ceil(probe_interval * 3000)
        self._clock = clock
        self._spawn = spawn
        self.wake = asyncio.Event()  # set on (re)connection: take free leases now, not a period later

    def probe_finished(self, share: RouteShare, event: ProbeFinished) -> None:
        """Subscriber: publish a probe this process ran, and store the flag it led to."""
        share.lease.result_arrived()
        if event.remote or not self._link.up:
            return
        scopes = share.route.scopes
        scope = scopes.upstream if event.result.ok else scopes.for_failure(event.result.kind)
        if scope is None:
            # Maybe this host's own trouble, and no egress group to share it with: hand the lease to a
            # peer for an interval, so the fleet's probing does not depend on this host's path.
            if share.lease.held:
                share.lease.hold(False)
                share.sit_out_until = self._clock() + self._interval
                lease = self._keys.probe_lease(scopes.upstream)
                self._spawn(self._link.call(functools.partial(_delete_if_mine, lease, self._origin)))
            return
        flag = share.route.flag
        started_ago = max(self._clock() - event.started, 0.0)
        message = encode(Probe(share.route.name, self._origin, scope, event.result, started_ago))
        working = orjson.dumps(
            {
                "working": flag.probed_working,
                "failures": flag.consecutive_failures,
                "successes": flag.consecutive_successes,
                "probe": probe_fields(event.result),
            }
        )

        async def publish(client: redis.Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self._keys.working(scope), working, px=self._working_ttl_ms)
                pipe.publish(self._keys.channel, message)
                await pipe.execute()

        self._spawn(self._link.call(publish))

    def apply_probe(self, share: RouteShare, probe: Probe) -> None:
        """Another process's probe: through our own event bus, as if we had run it (but not counted)."""
        route = share.route
        if probe.scope not in route.scopes:
            return  # another upstream, or a failure of another egress group's path
        share.lease.result_arrived()
        started = self._clock() - probe.started_ago
        route.events.publish(ProbeFinished(route.name, probe.result, started=started, remote=True))

    async def resync(self, shares: list[RouteShare]) -> bool:
        """Adopt the stored working flags (the latest of a route's scopes). False: Redis failed."""
        scopes = [scope for share in shares for scope in share.route.scopes.all]

        async def read(client: redis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for scope in scopes:
                    pipe.get(self._keys.working(scope))
                    pipe.pttl(self._keys.working(scope))
                return list(await pipe.execute())

        replies = await self._link.call(read)
        if replies is None:
            return False
        stored: dict[str, Any] = {}
        for index, scope in enumerate(scopes):
            raw, pttl = replies[2 * index], replies[2 * index + 1]
            if raw is not None and pttl == -1:
                log.warning("deleting a working key without expiry scope=%s", scope)
                if not await self._link.delete(self._keys.working(scope)):
                    return False
                raw = None
            stored[scope] = raw
        for share in shares:
            raws = [stored[scope] for scope in share.route.scopes.all if stored[scope] is not None]
            states = [state for state in map(stored_working, raws) if state is not None]
            state = max(states, key=lambda state: state.last_probe.at, default=None)
            if state is not None:
                share.route.flag.restore(
                    working=state.working,
                    failures=state.failures,
                    successes=state.successes,
                    last_probe=state.last_probe,
                )
            if len(states) < len(raws):
                log.warning("ignoring a malformed working key route=%s", share.route.name)
        return True

    async def keep_leases(self, shares: list[RouteShare]) -> None:
        """Hold or take each route's lease; runs until cancelled, survives every error."""
        while True:
            if self._link.up:
                try:
                    for share in shares:
                        await self._refresh(share)
                except Exception:
                    log.exception("probe lease loop error")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._period):
                    await self.wake.wait()

    async def release(self, shares: list[RouteShare]) -> None:
        """Give back the leases this process holds (and only those), so a peer takes over at once."""
        for share in shares:
            if share.lease.held:
                lease = self._keys.probe_lease(share.route.scopes.upstream)
                await self._link.call(functools.partial(_delete_if_mine, lease, self._origin))
                share.lease.hold(False)

    async def _refresh(self, share: RouteShare) -> None:
        if not share.lease.held and self._clock() < share.sit_out_until:
            return  # gave the lease up after a failure of its own path: a peer probes for now
        key = self._keys.probe_lease(share.route.scopes.upstream)
        held = await self._link.call(
            lambda client: client.eval(scripts.ACQUIRE_OR_RENEW, 1, key, self._origin, self._lease_ttl_ms)
        )
        now_held = bool(held) and self._link.up
        if now_held != share.lease.held:
            log.info("probe lease %s route=%s", "taken" if now_held else "lost", share.route.name)
        if now_held and not share.lease.held:
            last = share.route.flag.last_probe
            if last is None or time.time() - last.at > self._interval:
                share.route.prober.trigger()  # taken over from a holder that stopped probing: look now
        share.lease.hold(now_held)


async def _delete_if_mine(key: str, origin: str, client: redis.Redis) -> Any:
    return await client.eval(scripts.DELETE_IF_VALUE, 1, key, origin)
