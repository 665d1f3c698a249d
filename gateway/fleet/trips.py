"""Breaker trips and the single-flight half-open trial, shared per route.

* A breaker that live traffic opens publishes a :class:`Trip` (a fresh id, the rest of its
  period, its length) and stores it in a key that expires with the period. Every process,
  the sender included, adopts the id of each trip in arrival order, so the fleet agrees on
  which period it is in without comparing clocks.
* When the period ends, processes race ``SET NX PX`` on that period's trial key. The
  winner's claim lasts :data:`CLAIM_SECONDS` unless its trial call starts (then it is held
  for the call); a trial that ends neutral is given back and raced for again. A claim that no
  caller used is given back too, and its winner sits out the next round, so the claim goes
  to a process that has callers. Losers refuse (half-open busy) until the outcome arrives:
  :class:`Closed` closes everyone and deletes the trip key; a failure is a new :class:`Trip`.
  They race again every :data:`CLAIM_SECONDS`, or sooner when one of their callers is
  refused for want of the claim (:class:`TrialWanted`): the claim follows the demand.
* A trip made while Redis was away is published on reconnection, unless the fleet already
  has an open period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis.asyncio as redis

from gateway.events import BreakerChanged, TrialAdmitted, TrialReleased, TrialWanted
from gateway.fleet import scripts
from gateway.fleet.messages import Closed, Keys, Trip, encode, stored_trip

if TYPE_CHECKING:
    from gateway.fleet.link import RedisLink
    from gateway.fleet.shared import RouteShare

log = logging.getLogger(__name__)

# A won claim lapses this soon unless its trial call starts; losers retry at the same pace.
CLAIM_SECONDS: Final = 1.0
# The local permit ends this much before the claim's TTL (counted from before the SET was sent),
# so a stalled event loop cannot admit a trial on a claim that already lapsed in Redis.
_CLAIM_MARGIN: Final = 0.25
# A started trial lasts until the first token; its claim outlives that by this margin.
_TRIAL_MARGIN: Final = 2.0
# Refused callers wake the race, at most this often: a peer's trial may run for many seconds.
_WANTED_RETRY_SECONDS: Final = 0.1


class TripSharing:
    """Publishes this process's trips and trial outcomes; applies everyone's."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        origin: str,
        *,
        trial_timeout: float,
        clock: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._link = link
        self._keys = keys
        self._origin = origin
        self._trial_ttl_ms = math.ceil((trial_timeout + _TRIAL_MARGIN) * 1000)
        self._clock = clock
        self._spawn = spawn

    # -- local events --------------------------------------------------------------------------

    def breaker_changed(self, share: RouteShare, event: BreakerChanged) -> None:
        """Subscriber: share trips and closes caused by live traffic; race for the trial."""
        breaker = share.route.breaker
        if event.mode != "auto":
            return
        if event.new == "open" and event.by_traffic:
            # A new period gets a new id even while Redis is down, so its trial never reuses the
            # claim key of an earlier period, and a reconnection knows it was never shared.
            share.trip_id, share.trip_shared = uuid.uuid4().hex, False
        if not self._link.up:
            return
        if event.new == "open" and event.by_traffic:
            self._spawn(self.publish_trip(share, from_closed=event.old == "closed"))
        elif event.new == "closed" and event.by_traffic and event.old == "half_open" and share.trip_id:
            self._spawn(self._publish_closed(share.route.name, share.trip_id))
        elif event.new == "half_open" and breaker.trial_needs_permit:
            self._spawn(self.claim_trial(share))

    def trial_admitted(self, share: RouteShare, event: TrialAdmitted) -> None:
        """Subscriber: our trial call is under way; hold the claim (still ours) for as long as it may take."""
        key, share.claim_key = share.claim_key, None
        if key is not None and self._link.up:
            self._spawn(self._hold_claim(share.route.name, key))
            share.held_claim = key

    async def _hold_claim(self, route: str, key: str) -> None:
        args = (key, self._origin, self._trial_ttl_ms)
        held = await self._link.call(lambda client: client.eval(scripts.EXTEND_IF_VALUE, 1, *args))
        if held == 0:
            log.warning("trial claim lapsed before its call started; a peer may run a trial too route=%s", route)

    @staticmethod
    def trial_wanted(share: RouteShare, event: TrialWanted) -> None:
        """Subscriber: a caller here was refused for want of the claim; race for it now."""
        share.trial_wanted.set()

    def trial_released(self, share: RouteShare, event: TrialReleased) -> None:
        """Subscriber: our trial ended neutral; give the claim back so the fleet's next caller tries."""
        key, share.held_claim = share.held_claim, None
        if key is None or not self._link.up:
            return
        share.route.breaker.revoke_trial_permit()
        self._spawn(self._give_back_and_claim(share, key))

    # -- to the fleet --------------------------------------------------------------------------

    async def publish_trip(self, share: RouteShare, *, from_closed: bool) -> None:
        """Announce and store the current local open period."""
        breaker, trip_id = share.route.breaker, share.trip_id
        if breaker.open_until is None or trip_id is None:
            return
        open_for = max(breaker.open_until - self._clock(), 0.001)
        duration = breaker.current_open_duration
        message = encode(Trip(share.route.name, self._origin, trip_id, open_for, duration, from_closed))
        # Kept through the trial that follows the period, so a member joining then starts half-open,
        # not closed; the trial's success deletes it, a failure replaces it.
        stored = orjson.dumps({"trip_id": trip_id, "duration": duration, "trial_ms": self._trial_ttl_ms})
        ttl_ms = max(math.ceil(open_for * 1000), 1) + self._trial_ttl_ms

        async def publish(client: redis.Redis) -> bool:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self._keys.trip(share.route.name), stored, px=ttl_ms)
                pipe.publish(self._keys.channel, message)
                await pipe.execute()
            return True

        if await self._link.call(publish):
            share.trip_shared = True

    async def _publish_closed(self, route: str, trip_id: str) -> None:
        message = encode(Closed(route, self._origin, trip_id))
        keys = [self._keys.trip(route), self._keys.channel]
        await self._link.call(lambda client: client.eval(scripts.CLOSE_PERIOD, 2, *keys, trip_id, message))

    async def claim_trial(self, share: RouteShare) -> None:
        """Race for this period's trial until we win it, or the period ends, or Redis goes."""
        breaker, trip_id = share.route.breaker, share.trip_id
        key = self._keys.trial(share.route.name, trip_id or f"local-{self._origin}")
        claim_ms = math.ceil(CLAIM_SECONDS * 1000)
        while breaker.state == "half_open" and share.trip_id == trip_id:
            share.trial_wanted.clear()  # refusals from here on are demand for this round
            sent_at = self._clock()
            won = await self._link.call(lambda client: client.set(key, self._origin, nx=True, px=claim_ms))
            if won is None and not self._link.up:
                breaker.permit_trial()  # Redis is gone: this process decides alone
                return
            pause = CLAIM_SECONDS
            if won:
                share.claim_key = key
                breaker.permit_trial(until=sent_at + CLAIM_SECONDS - _CLAIM_MARGIN)
                await asyncio.sleep(CLAIM_SECONDS)
                if share.claim_key != key:
                    return  # the trial started (or Redis went and we decide alone)
                # Won but no call came: stop acting as the trial, hand the claim back, and sit out
                # a round (unless a caller turns up here) so a peer with callers wins it.
                share.claim_key = None
                breaker.revoke_trial_permit()
                await self._link.call(lambda client: client.eval(scripts.DELETE_IF_VALUE, 1, key, self._origin))
                pause = 2 * CLAIM_SECONDS
            await self._until_wanted(share, pause)

    @staticmethod
    async def _until_wanted(share: RouteShare, seconds: float) -> None:
        """Wait ``seconds``, or less once a caller here has been refused for want of the claim."""
        await asyncio.sleep(_WANTED_RETRY_SECONDS)  # a burst of refusals is one race, not one per caller
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds - _WANTED_RETRY_SECONDS, 0.0)):
                await share.trial_wanted.wait()

    async def _give_back_and_claim(self, share: RouteShare, key: str) -> None:
        await self._link.call(lambda client: client.eval(scripts.DELETE_IF_VALUE, 1, key, self._origin))
        await self.claim_trial(share)

    # -- from the fleet ------------------------------------------------------------------------

    def apply_trip(self, share: RouteShare, trip: Trip) -> None:
        """Adopt the period (ours too: arrival order is the fleet's order) and open for its rest."""
        share.trip_id, share.trip_shared = trip.trip_id, True
        if trip.origin != self._origin:
            share.route.breaker.trip(trip.open_for, trip.duration)

    def apply_closed(self, share: RouteShare, closed: Closed) -> None:
        """The trial of the period we are in succeeded elsewhere."""
        if closed.trip_id == share.trip_id:
            share.route.breaker.close_from_fleet()

    async def resync(self, shares: list[RouteShare]) -> bool:
        """Adopt the stored open periods; publish a local one the fleet never heard of. False: Redis failed."""

        async def read(client: redis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for share in shares:
                    pipe.get(self._keys.trip(share.route.name))
                    pipe.pttl(self._keys.trip(share.route.name))
                return list(await pipe.execute())

        replies = await self._link.call(read)
        if replies is None:
            return False
        for index, share in enumerate(shares):
            raw, pttl = replies[2 * index], replies[2 * index + 1]
            stored = stored_trip(raw)
            if stored is not None and isinstance(pttl, int) and pttl > 0:
                trip_id, duration, trial_ms = stored
                share.trip_id, share.trip_shared = trip_id, True
                # Past the open period, in its trial window: open for a moment, so the timer
                # moves us to half-open and we race for the trial like everyone else.
                share.route.breaker.trip(max(pttl - trial_ms, 1) / 1000, duration)
            elif raw is not None and stored is None:
                log.warning("ignoring a malformed trip key route=%s", share.route.name)
            elif not share.trip_shared and share.route.breaker.state == "open" and share.route.breaker.mode == "auto":
                await self.publish_trip(share, from_closed=True)
        return True

    @staticmethod
    def went_down(share: RouteShare) -> None:
        """Redis is gone: this process runs its own trials."""
        share.claim_key = share.held_claim = None
        share.route.breaker.trial_needs_permit = False
        share.route.breaker.permit_trial()
