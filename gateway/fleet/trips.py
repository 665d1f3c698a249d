"""Breaker trips and the single-flight half-open trial, shared per route.

* A breaker that live traffic opens publishes a :class:`Trip` (a fresh id, the rest of its
  period, its length) and stores it in a key that expires with the period. Every process,
  the sender included, adopts the id of each trip in arrival order, so the fleet agrees on
  which period it is in without comparing clocks.
* When the period ends, each process runs one race for that period's trial key
  (``CLAIM_OR_WAIT``: take it if free, else learn when it lapses). The winner's claim lasts
  :data:`CLAIM_SECONDS` unless its trial call starts: then it is extended for the call
  before the call is sent (:meth:`TripSharing.confirm_trial`; a lapsed claim sends nothing).
  A trial that ends neutral passes the claim to the next caller while the race's permit
  runs, else gives it back and races again.
  Losers refuse (half-open busy) until the outcome arrives: :class:`Closed` closes everyone
  and deletes the trip key; a failure is a new :class:`Trip`.
* The claim follows the demand. A process races again every :data:`CLAIM_SECONDS`, or as
  soon as the holder's claim can lapse once one of its own callers has been refused for want
  of it (:class:`TrialWanted`). A claim won on such demand lasts until the refused caller's
  Retry-After has passed, so that caller finds it. A claim that no caller used is given back
  when its permit ends, and its winner sits out a round unless its own callers are refused,
  so the claim goes to a process that has callers.
* A trip made while Redis was away is published on reconnection, unless the fleet already
  has an open period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis.asyncio as redis

from gateway.breaker import HALF_OPEN_BUSY_RETRY_AFTER
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
# Refused callers wake the race no sooner than this after the last attempt (a burst is one race).
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
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
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
        if event.new != "half_open":
            share.claim_key = share.held_claim = None  # the trial phase is over: no claim is ours or held
        if event.mode != "auto":
            return
        if event.new == "open" and event.by_traffic:
            # A new period gets a new id even while Redis is down, so its trial never reuses the
            # claim key of an earlier period, and a reconnection knows it was never shared.
            share.trip_id, share.trip_shared = uuid.uuid4().hex, False
        if not self._link.up:
            return
        if event.new == "open" and event.by_traffic:
            share.trip_publish = self._spawn(self.publish_trip(share, from_closed=event.old == "closed"))
        elif event.new == "closed" and event.by_traffic and event.old == "half_open" and share.trip_id:
            self._spawn(self._publish_closed(share, share.trip_id))
        elif event.new == "half_open" and breaker.trial_needs_permit:
            self.start_claiming(share)

    def trial_admitted(self, share: RouteShare, event: TrialAdmitted) -> None:
        """Subscriber: our trial call was admitted; the claim is now held for it (see :meth:`confirm_trial`)."""
        key, share.claim_key = share.claim_key, None
        if key is not None:  # a further trial of the same permit (half-open calls > 1) leaves the first's claim noted
            share.held_claim = key if self._link.up else None

    async def confirm_trial(self, share: RouteShare) -> bool:
        """Before our trial call is sent: hold its claim for as long as the call may take. False: it lapsed.

        The permit ends before the claim can lapse, but a stalled loop or a slow Redis can still let
        it lapse between admission and sending, and a peer may have won it since: then nothing is sent.
        """
        key, trip_id = share.held_claim, share.trip_id
        if key is None:
            return True  # deciding alone: Redis is away
        held = await self._link.call(functools.partial(_extend_if_mine, key, self._origin, self._trial_ttl_ms))
        if held != 0:
            return True  # held now, or Redis went away meanwhile and this process decides alone
        if share.trip_id != trip_id:
            return False  # a new period began meanwhile: its race and permit are not this call's to touch
        log.warning("trial claim lapsed before its call was sent; not sending it route=%s", share.route.name)
        if share.held_claim == key:
            share.held_claim = None
        share.route.breaker.revoke_trial_permit()
        self.start_claiming(share)
        return False

    @staticmethod
    def trial_wanted(share: RouteShare, event: TrialWanted) -> None:
        """Subscriber: a caller here was refused for want of the claim; race for it now."""
        share.trial_wanted.set()

    def trial_released(self, share: RouteShare, event: TrialReleased) -> None:
        """Subscriber: our trial ended neutral; give the claim back so the fleet's next caller tries."""
        key, share.held_claim = share.held_claim, None
        if key is None or not self._link.up:
            return
        if share.route.breaker.trials_running:
            share.held_claim = key  # another trial of ours still runs on this claim (half-open calls > 1)
            return
        if self._racing(share):
            share.claim_key = key  # the race's permit still runs: the next caller here is the trial
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

        if await self._link.call(publish) and share.trip_id == trip_id:
            share.trip_shared = True

    async def _publish_closed(self, share: RouteShare, trip_id: str) -> None:
        # After the trip it closes: a trip published late (a slow Redis) would re-open everyone else.
        pending = share.trip_publish
        if pending is not None and not pending.done():
            await asyncio.wait({pending})
        route = share.route.name
        message = encode(Closed(route, self._origin, trip_id))
        keys = [self._keys.trip(route), self._keys.channel]
        await self._link.call(lambda client: client.eval(scripts.CLOSE_PERIOD, 2, *keys, trip_id, message))

    def start_claiming(self, share: RouteShare) -> None:
        """Race for the current period's trial, unless this process already does."""
        if self._racing(share):
            return  # two races of one process would wake, revoke and give back each other's claims
        if share.claimer_trip != share.trip_id:
            share.trial_wanted.clear()  # callers refused in an earlier period are no demand for this one
        share.claimer_trip = share.trip_id
        share.claimer = self._spawn(self.claim_trial(share))

    async def claim_trial(self, share: RouteShare) -> None:
        """Race for this period's trial until we win it, or the period ends, or Redis goes."""
        breaker, trip_id = share.route.breaker, share.trip_id
        key = self._keys.trial(share.route.name, trip_id or f"local-{self._origin}")
        while breaker.state == "half_open" and share.trip_id == trip_id:
            wanted = share.trial_wanted.is_set()
            share.trial_wanted.clear()  # refusals from here on are demand for the next attempt
            # Won on demand, the claim outlasts the Retry-After the refused caller was given.
            hold = CLAIM_SECONDS + (HALF_OPEN_BUSY_RETRY_AFTER if wanted else 0.0)
            sent_at = self._clock()
            claim = functools.partial(_claim_or_wait, key, self._origin, math.ceil(hold * 1000))
            reply = await self._link.call(claim)
            if reply is None and not self._link.up:
                breaker.permit_trial()  # Redis is gone: this process decides alone
                return
            if breaker.state != "half_open" or share.trip_id != trip_id:
                continue  # the period ended during the round trip: this reply is about an old key
            won, holder_ms = (int(reply[0]), int(reply[1])) if isinstance(reply, list) else (0, 0)
            # Lost: racing again before the holder's claim can lapse would be futile (a stray key
            # without a TTL, -1, gets the plain round).
            soonest = min(max(holder_ms / 1000, _WANTED_RETRY_SECONDS), CLAIM_SECONDS) if holder_ms >= 0 else 1.0
            pause = CLAIM_SECONDS
            if won and breaker.trials_running:
                # A trial of ours runs (started across a blip, or while Redis was away): the claim is
                # its, held for as long as it may take; its end decides or gives the claim back.
                share.held_claim = key
                await self._link.call(functools.partial(_extend_if_mine, key, self._origin, self._trial_ttl_ms))
                if share.held_claim == key:
                    return
                continue  # that trial ended meanwhile (neutral: the claim was handed to us): race on
            if won:
                share.claim_key = key
                permit_until = sent_at + hold - _CLAIM_MARGIN
                breaker.permit_trial(until=permit_until)
                await asyncio.sleep(max(permit_until - self._clock(), 0.0))
                if share.claim_key != key:
                    if share.held_claim == key:
                        return  # our trial runs on it; its end decides the period or restarts the race
                    continue  # it ended neutral, or Redis blipped: the restart found us still running
                # No call came: stop acting as the trial and hand the claim back now; unless
                # callers here want it, sit out a round so a peer with callers wins it.
                share.claim_key = None
                breaker.revoke_trial_permit()
                await self._link.call(lambda client: client.eval(scripts.DELETE_IF_VALUE, 1, key, self._origin))
                soonest, pause = _WANTED_RETRY_SECONDS, 2 * CLAIM_SECONDS
            await self._until_wanted(share, pause, soonest=soonest)

    @staticmethod
    async def _until_wanted(share: RouteShare, seconds: float, *, soonest: float) -> None:
        """Wait ``seconds``, or only ``soonest`` if a caller here has been refused for want of the claim."""
        await asyncio.sleep(soonest)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds - soonest, 0.0)):
                await share.trial_wanted.wait()

    async def _give_back_and_claim(self, share: RouteShare, key: str) -> None:
        if self._racing(share):
            # Our race wakes when its permit ends and takes the claim again; deleting it now could
            # land after that and leave us a permit without a claim.
            return
        await self._link.call(lambda client: client.eval(scripts.DELETE_IF_VALUE, 1, key, self._origin))
        self.start_claiming(share)

    @staticmethod
    def _racing(share: RouteShare) -> bool:
        """Whether this process runs a race for the current period."""
        running = share.claimer
        return running is not None and not running.done() and share.claimer_trip == share.trip_id

    # -- from the fleet ------------------------------------------------------------------------

    def apply_trip(self, share: RouteShare, trip: Trip) -> None:
        """Adopt the period (ours too: arrival order is the fleet's order) and open for its rest."""
        relabelled = share.trip_id != trip.trip_id
        share.trip_id, share.trip_shared = trip.trip_id, True
        breaker = share.route.breaker
        if trip.origin != self._origin:
            breaker.trip(trip.open_for, trip.duration)
        elif relabelled and breaker.mode == "auto" and breaker.state == "half_open" and self._link.up:
            # Our own trip, delivered after our open period ended: the fleet is in that period now,
            # and nothing else would start a race for its trial (the old race stops at the new id).
            share.claim_key = None
            breaker.revoke_trial_permit()
            self.start_claiming(share)

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
                if trip_id == share.trip_id and share.route.breaker.state == "half_open":
                    share.trip_shared = True  # already in this period's trial: a re-trip would drop our trial
                    continue
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
        """Redis is gone: this process runs its own trials (a claim held for a running trial stays noted)."""
        share.claim_key = None
        share.route.breaker.trial_needs_permit = False
        share.route.breaker.permit_trial()


async def _claim_or_wait(key: str, origin: str, ttl_ms: int, client: redis.Redis) -> Any:
    return await client.eval(scripts.CLAIM_OR_WAIT, 1, key, origin, ttl_ms)


async def _extend_if_mine(key: str, origin: str, ttl_ms: int, client: redis.Redis) -> Any:
    return await client.eval(scripts.EXTEND_IF_VALUE, 1, key, origin, ttl_ms)
