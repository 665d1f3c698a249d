"""Breaker trips and closes, shared per route scope: facts with a TTL, never a protocol.

* A breaker that live traffic opens publishes a :class:`Trip` (a fresh id, the rest of its period,
  its length) in the scope its cause is shared in (:mod:`gateway.scope`; a path-local cause without
  an egress group is not shared), and stores it in a key that expires after the period and its
  trial window. Every process of that scope, the sender included, adopts the id of each trip in
  arrival order, so the fleet agrees on which period it is in without comparing clocks.
* Each process runs its own half-open trial when its period ends. A peer ends an adopted period
  at a jittered moment (``open_for`` times 0.8 to 1.2), so the first trial's close usually reaches
  the others before they send theirs.
* A trial that succeeds closes the route: :class:`Closed` closes every process in that period, and
  the trip key is deleted (by script, only if it still holds that period). A close that could not
  be published is retried on the next re-sync.
* On every re-sync a process adopts the stored periods, publishes a local one the fleet never heard
  of, and treats a missing key for the period it is in as "closed": nothing it missed can keep it
  open. A key without a TTL is treated as expired and deleted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis.asyncio as redis

from gateway.events import BreakerChanged
from gateway.fleet import scripts
from gateway.fleet.messages import Closed, Keys, Trip, encode, stored_trip
from gateway.fleet.share import Period, RouteShare

if TYPE_CHECKING:
    from gateway.fleet.link import RedisLink

log = logging.getLogger(__name__)

# A peer's open period ends here at its end times this factor, drawn afresh for each adoption.
JITTER: Final = (0.8, 1.2)
# The trip key outlives the open period by the trial window plus this margin, so a process joining
# during a trial starts half-open, not closed.
_TRIAL_MARGIN: Final = 2.0


class TripSharing:
    """Publishes this process's trips and closes; applies everyone's."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        origin: str,
        *,
        trial_window: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._link = link
        self._keys = keys
        self._origin = origin
        self._trial_ms = math.ceil((trial_window + _TRIAL_MARGIN) * 1000)
        self._spawn = spawn
        self._clock = clock
        self._rng = rng or random.Random()

    # -- local events --------------------------------------------------------------------------

    def breaker_changed(self, share: RouteShare, event: BreakerChanged) -> None:
        """Subscriber: share trips and closes caused by live traffic here."""
        if event.from_fleet:
            return
        if event.mode != "auto" or (event.new == "closed" and not event.by_traffic):
            share.period = None  # an operator's mode: the automatic period is over
            return
        if event.new == "open" and event.by_traffic:
            # A new id even while Redis is away, so a reconnection knows it was never shared.
            # No wider than every failure since the route last worked: a path's trouble in it keeps it narrow.
            scope = share.route.scopes.for_failure(event.path_cause or event.cause)
            share.period = Period(uuid.uuid4().hex, scope, self._origin, shared=False)
            if scope is not None and self._link.up:
                share.trip_publish = self._spawn(self.publish_trip(share, from_closed=event.old == "closed"))
        elif event.new == "closed" and event.by_traffic and share.period is not None:
            period, share.period = share.period, None
            if period.scope is not None:
                share.unpublished_close = period
                self._spawn(self._publish_closed(share, period))

    # -- to the fleet --------------------------------------------------------------------------

    async def publish_trip(self, share: RouteShare, *, from_closed: bool) -> None:
        """Announce and store the current local open period."""
        breaker, period = share.route.breaker, share.period
        if breaker.open_until is None or period is None or period.scope is None:
            return
        open_for = max(breaker.open_until - self._clock(), 0.001)
        duration = breaker.current_open_duration
        message = encode(
            Trip(share.route.name, self._origin, period.scope, period.trip_id, open_for, duration, from_closed)
        )
        open_ms = max(math.ceil(open_for * 1000), 1)
        # Outlives a peer's jittered end too, so a process joining then is not told "closed";
        # ``trial_ms`` is what the key lasts beyond the period itself.
        ttl_ms = max(math.ceil(open_for * JITTER[1] * 1000), 1) + self._trial_ms
        stored = orjson.dumps({"trip_id": period.trip_id, "duration": duration, "trial_ms": ttl_ms - open_ms})

        async def publish(client: redis.Redis) -> bool:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self._keys.trip(period.scope or ""), stored, px=ttl_ms)
                pipe.publish(self._keys.channel, message)
                await pipe.execute()
            return True

        if await self._link.call(publish) and share.period is period:
            share.period = Period(period.trip_id, period.scope, period.origin, shared=True)

    async def _publish_closed(self, share: RouteShare, period: Period) -> None:
        # After the trip it closes: a trip published late (a slow Redis) would re-open everyone else.
        pending = share.trip_publish
        if pending is not None and not pending.done():
            await asyncio.wait({pending})
        if await self._close(share, period) and share.unpublished_close is period:
            share.unpublished_close = None

    async def _close(self, share: RouteShare, period: Period) -> bool:
        """Delete the period's key (if it still holds that period) and announce the close; False: Redis failed."""
        scope = period.scope or ""
        message = encode(Closed(share.route.name, self._origin, scope, period.trip_id))
        keys = [self._keys.trip(scope), self._keys.channel]
        done = await self._link.call(
            lambda client: client.eval(scripts.CLOSE_PERIOD, 2, *keys, period.trip_id, message)
        )
        return done is not None

    # -- from the fleet ------------------------------------------------------------------------

    def apply_trip(self, share: RouteShare, trip: Trip) -> None:
        """Adopt the period (ours too: arrival order is the fleet's order); a peer's opens us for its rest."""
        breaker, current = share.route.breaker, share.period
        if breaker.mode != "auto":
            return
        if trip.origin == self._origin and (breaker.state == "closed" or current is None):
            return  # our own trip came back after its trial had closed it already: nothing to adopt
        adopted = trip.origin == self._origin or breaker.trip(trip.open_for * self._rng.uniform(*JITTER), trip.duration)
        if not adopted and (breaker.state == "closed" or (current is not None and current.scope != trip.scope)):
            return  # refused, or already open longer for a reason of another scope: keep ours
        share.period = Period(trip.trip_id, trip.scope, trip.origin, shared=True)

    def apply_closed(self, share: RouteShare, closed: Closed) -> None:
        """A trial of the period we are in succeeded elsewhere."""
        period = share.period
        if period is not None and closed.trip_id == period.trip_id:
            share.period = None
            share.route.breaker.close_from_fleet()

    async def resync(self, shares: list[RouteShare]) -> bool:
        """Settle every route against the stored periods (see the module docstring). False: Redis failed."""
        scopes = [scope for share in shares for scope in share.route.scopes.all]

        async def read(client: redis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for scope in scopes:
                    pipe.get(self._keys.trip(scope))
                    pipe.pttl(self._keys.trip(scope))
                return list(await pipe.execute())

        replies = await self._link.call(read)
        if replies is None:
            return False
        stored = {scope: (replies[2 * i], replies[2 * i + 1]) for i, scope in enumerate(scopes)}
        for share in shares:
            if not await self._resync_route(share, stored):
                return False
        return True

    async def _resync_route(self, share: RouteShare, stored: dict[str, tuple[Any, Any]]) -> bool:
        breaker, name = share.route.breaker, share.route.name
        pending = share.unpublished_close
        if pending is not None:
            if not await self._close(share, pending):
                return False
            share.unpublished_close = None
            held = stored_trip(stored.get(pending.scope or "", (None, -2))[0])
            if held is not None and held[0] == pending.trip_id:
                stored.pop(pending.scope or "", None)  # deleted just now; a newer peer period is left to adopt
        current = share.period
        found = False
        for scope in share.route.scopes.all:
            raw, pttl = stored.get(scope, (None, -2))
            trip = stored_trip(raw)
            if raw is not None and trip is None:
                log.warning("ignoring a malformed trip key route=%s", name)
                continue
            if trip is None:
                continue
            if not isinstance(pttl, int) or pttl == -1:
                log.warning("deleting a trip key without expiry route=%s", name)
                if not await self._link.delete(self._keys.trip(scope)):
                    return False
                continue
            trip_id, duration, trial_ms = trip
            if pttl <= 0:
                continue
            found = True
            if current is not None and trip_id == current.trip_id:
                share.period = Period(trip_id, scope, current.origin, shared=True)
                continue
            if breaker.mode != "auto":
                continue
            # Past the open period, in its trial window: open for a moment, so the timer moves us to
            # half-open and we run our own trial.
            open_for = max(pttl - trial_ms, 1) / 1000
            breaker.trip(open_for * self._rng.uniform(*JITTER), duration)
            share.period = Period(trip_id, scope, "fleet", shared=True)
        if found or current is None or breaker.mode != "auto":
            return True
        if current.shared and breaker.state != "closed":
            log.info("the fleet closed route=%s while this process was away", name)
            share.period = None
            breaker.close_from_fleet()
        elif not current.shared and current.scope is not None and breaker.state == "open":
            await self.publish_trip(share, from_closed=True)
        return True
