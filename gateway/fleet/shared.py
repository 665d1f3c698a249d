"""Share each route's health decisions across gateway processes; see :mod:`gateway.fleet`.

Per route:

* **Trips.** A breaker that live traffic opens publishes ``trip`` (its id, the rest of its open
  period and its length) and stores it in a key that expires when the period ends, for processes
  that start later or reconnect. Receivers open their own breaker for the same time. Trip ids
  grow with time, so processes that tripped at once converge on the latest.
* **Trials.** When an open period ends, every process races ``SET NX PX`` on the trial key of that
  trip; only the winner's breaker admits the half-open trial, the others refuse (half-open busy)
  until its outcome arrives: ``closed`` closes them, a new ``trip`` re-opens them. If the winner
  dies, its claim expires and the race runs again.
* **Probes.** One process holds the route's probe lease (``SET NX PX``, renewed every third of an
  interval, expiring after two thirds, so a dead holder is replaced within one interval); it alone
  probes and publishes each result, which every process applies to its own working flag and
  breaker. The flag after the latest probe is stored for processes that (re)join.
* **Overrides.** Operator modes are stored without TTL and published; they survive restarts.

When Redis is unreachable every process decides alone (own trials, own probes), exactly as
without a fleet; on reconnection it pushes the overrides set meanwhile, then re-reads the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as redis

from gateway.events import BreakerChanged, ProbeFinished, ProbeResult, TrialAdmitted
from gateway.fleet.link import RedisLink
from gateway.fleet.messages import Keys, Message, OverrideTarget
from gateway.route_pool import Route, RoutePool

log = logging.getLogger(__name__)

_RENEW_LEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_BREAKER_MODES: Final = {"open": "force_open", "closed": "force_closed", "auto": "automatic"}
# A won claim lapses this soon unless its trial call starts; losers retry at the same pace.
_TRIAL_CLAIM_SECONDS: Final = 1.0
# A started trial lasts until the first token; its claim outlives that by this margin.
_TRIAL_MARGIN: Final = 2.0


@dataclass
class _RouteShare:
    """What this process knows of one route's fleet state."""

    route: Route
    trip_id: str | None = None
    lease_held: bool = False
    trial_key: str | None = None  # the claim this process won, until its trial call starts


class SharedHealth:
    """One process's member of the fleet: publishes local decisions, applies everyone else's."""

    def __init__(
        self,
        routes: RoutePool,
        *,
        url: str,
        prefix: str,
        timeout: float,
        probe_interval: float,
        trial_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.keys = Keys(prefix)
        self._routes = {route.name: _RouteShare(route) for route in routes}
        self._clock = clock
        self._lease_period = max(probe_interval / 3, 0.05)
        self._lease_ttl_ms = max(math.ceil(self._lease_period * 2000), 100)
        self._trial_ttl = trial_timeout + _TRIAL_MARGIN
        self._working_ttl_ms = math.ceil(probe_interval * 3000)
        self._on_state = on_state
        self._pending: dict[tuple[str, OverrideTarget], str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self._lease_wake = asyncio.Event()  # set on (re)connection: take free leases now, not a period later
        self.link = RedisLink(
            url,
            channel=self.keys.channel,
            timeout=timeout,
            on_message=self._receive,
            on_up=self._resync,
            on_down=self._went_down,
        )
        for share in self._routes.values():
            share.route.events.subscribe(BreakerChanged, functools.partial(self._breaker_changed, share))
            share.route.events.subscribe(ProbeFinished, functools.partial(self._probe_finished, share))
            share.route.events.subscribe(TrialAdmitted, functools.partial(self._trial_started, share))
            share.route.prober.may_probe = functools.partial(self._may_probe, share)

    @property
    def up(self) -> bool:
        """Whether decisions are being shared right now."""
        return self.link.up

    def snapshot(self) -> dict[str, Any]:
        """For /status: whether sharing works, who we are, which probe leases we hold."""
        return {
            "up": self.up,
            "origin": self.origin,
            "probe_leases": sorted(name for name, share in self._routes.items() if share.lease_held and self.up),
        }

    def start(self) -> None:
        """Connect and keep the probe leases, in the background."""
        self._on_state(False)
        self.link.start()
        self._lease_task = asyncio.get_running_loop().create_task(self._keep_leases(), name="probe-leases")

    async def stop(self) -> None:
        """Release the probe leases we hold (so a peer takes over at once) and disconnect."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        held = [self.keys.probe_lease(name) for name, share in self._routes.items() if share.lease_held]
        if held:
            await self.link.call(lambda client: client.delete(*held))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.stop()

    async def share_override(self, route: str, target: OverrideTarget, mode: str) -> bool:
        """Store and announce an operator mode; False if Redis is down (it is pushed on reconnection)."""
        self._pending[(route, target)] = mode
        if await self._write_override(route, target, mode):
            self._pending.pop((route, target), None)
            return True
        return False

    def _may_probe(self, share: _RouteShare) -> bool:
        """Probe when this process holds the lease, or when there is no fleet to rely on."""
        return not self.link.up or share.lease_held

    # -- local events -> fleet -----------------------------------------------------------------

    def _breaker_changed(self, share: _RouteShare, event: BreakerChanged) -> None:
        breaker = share.route.breaker
        if event.mode != "auto":
            return
        if event.new == "open" and event.by_traffic:
            # A new period gets a new id even while Redis is down, so its trial never reuses the
            # claim key of an earlier period.
            share.trip_id = f"{time.time_ns():016x}-{self.origin}"
        if not self.up:
            return
        if event.new == "open" and event.by_traffic and breaker.open_until is not None:
            open_for = max(breaker.open_until - self._clock(), 0.001)
            fields = {"trip_id": share.trip_id, "open_for": open_for, "duration": breaker.current_open_duration}
            self._spawn(self._publish_trip(share, fields, from_closed=event.old == "closed"))
        elif event.new == "closed" and event.by_traffic and event.old == "half_open":
            message = Message("closed", share.route.name, self.origin, {"trip_id": share.trip_id})
            self._spawn(self.link.call(lambda client: client.publish(self.keys.channel, message.encode())))
        elif event.new == "half_open" and breaker.trial_needs_permit:
            self._spawn(self._claim_trial(share, share.trip_id))

    def _probe_finished(self, share: _RouteShare, event: ProbeFinished) -> None:
        if event.remote or not self.up:
            return
        result = event.result
        flag = share.route.flag
        fields = {
            "ok": result.ok,
            "at": result.at,
            "latency": result.latency,
            "error": result.error,
            "started_ago": max(self._clock() - event.started, 0.0),
        }
        message = Message("probe", share.route.name, self.origin, fields)
        working = orjson.dumps(
            {
                "working": flag.probed_working,
                "failures": flag.consecutive_failures,
                "successes": flag.consecutive_successes,
                "probe": fields,
            }
        )

        async def publish(client: redis.Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.working(share.route.name), working, px=self._working_ttl_ms)
                pipe.publish(self.keys.channel, message.encode())
                await pipe.execute()

        self._spawn(self.link.call(publish))

    async def _publish_trip(self, share: _RouteShare, fields: dict[str, Any], *, from_closed: bool) -> None:
        message = Message("trip", share.route.name, self.origin, {**fields, "from_closed": from_closed})
        stored = orjson.dumps({"trip_id": fields["trip_id"], "duration": fields["duration"]})

        async def publish(client: redis.Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.trip(share.route.name), stored, px=max(math.ceil(fields["open_for"] * 1000), 1))
                pipe.publish(self.keys.channel, message.encode())
                await pipe.execute()

        await self.link.call(publish)

    async def _claim_trial(self, share: _RouteShare, trip_id: str | None) -> None:
        """Race for the trial of this open period; a loser retries until the claim is free again.

        The winner's claim is short until its trial call actually starts (see :meth:`_trial_started`),
        so a winner that gets no traffic, or dies, holds up the fleet's recovery for one
        claim period only.
        """
        breaker = share.route.breaker
        key = self.keys.trial(share.route.name, trip_id or f"local-{self.origin}")
        while breaker.state == "half_open" and share.trip_id == trip_id:
            won = await self.link.call(
                lambda client: client.set(key, self.origin, nx=True, px=math.ceil(_TRIAL_CLAIM_SECONDS * 1000))
            )
            if won is None and not self.up:
                breaker.permit_trial()  # Redis is gone: this process decides alone
                return
            if won:
                share.trial_key = key
                breaker.permit_trial()
                return
            await asyncio.sleep(_TRIAL_CLAIM_SECONDS)

    def _trial_started(self, share: _RouteShare, event: TrialAdmitted) -> None:
        """Our trial call is under way: hold the claim for as long as the call may take."""
        key = share.trial_key
        if key is None or not self.up:
            return
        share.trial_key = None
        ttl_ms = math.ceil(self._trial_ttl * 1000)
        self._spawn(self.link.call(lambda client: client.set(key, self.origin, xx=True, px=ttl_ms)))

    # -- fleet -> local ------------------------------------------------------------------------

    def _receive(self, raw: bytes) -> None:
        message = Message.decode(raw)
        if message is None or message.origin == self.origin or message.route not in self._routes:
            return
        share = self._routes[message.route]
        route, fields = share.route, message.fields
        if message.kind == "trip":
            self._apply_trip(share, str(fields["trip_id"]), float(fields["open_for"]), float(fields["duration"]))
            if fields.get("from_closed") and share.lease_held:
                route.prober.trigger()  # live traffic elsewhere says the upstream broke: look now
        elif message.kind == "closed":
            trip_id = fields.get("trip_id")
            if share.trip_id is None or (isinstance(trip_id, str) and trip_id >= share.trip_id):
                route.breaker.close_from_fleet()
        elif message.kind == "probe":
            result = _probe_result(fields)
            started = self._clock() - float(fields["started_ago"])
            route.events.publish(ProbeFinished(route.name, result, started=started, remote=True))
        elif message.kind == "override":
            self._apply_override(route, fields["target"], str(fields["mode"]))

    def _apply_trip(self, share: _RouteShare, trip_id: str, open_for: float, duration: float) -> None:
        if share.trip_id is not None and trip_id < share.trip_id:
            return  # an older period than the one we know
        share.trip_id = trip_id
        share.route.breaker.trip(open_for, duration)

    @staticmethod
    def _apply_override(route: Route, target: object, mode: str) -> None:
        if target == "breaker" and mode in _BREAKER_MODES:
            getattr(route.breaker, _BREAKER_MODES[mode])()
        elif target == "working" and mode in ("working", "not_working", "auto"):
            route.flag.set_mode(mode)  # type: ignore[arg-type]

    # -- connection state ----------------------------------------------------------------------

    async def _resync(self) -> None:
        """Connected (again): push overrides set while away, then adopt the fleet's state."""
        for share in self._routes.values():
            share.route.breaker.trial_needs_permit = True
        for (route, target), mode in list(self._pending.items()):
            if await self._write_override(route, target, mode):
                self._pending.pop((route, target), None)

        async def read(client: redis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.keys.overrides)
                for name in self._routes:
                    pipe.get(self.keys.trip(name))
                    pipe.pttl(self.keys.trip(name))
                    pipe.get(self.keys.working(name))
                return list(await pipe.execute())

        replies = await self.link.call(read)
        if replies is None:
            return
        overrides = {key.decode(): value.decode() for key, value in replies[0].items()}
        for index, (name, share) in enumerate(self._routes.items()):
            trip, pttl, working = replies[1 + 3 * index : 4 + 3 * index]
            for target in ("breaker", "working"):
                self._apply_override(share.route, target, overrides.get(f"{name}:{target}", "auto"))
            if trip is not None and pttl > 0:
                stored = orjson.loads(trip)
                self._apply_trip(share, str(stored["trip_id"]), pttl / 1000, float(stored["duration"]))
            if working is not None:
                state = orjson.loads(working)
                share.route.flag.restore(
                    working=bool(state["working"]),
                    failures=int(state["failures"]),
                    successes=int(state["successes"]),
                    last_probe=_probe_result(state["probe"]),
                )
        self._on_state(True)
        self._lease_wake.set()

    def _went_down(self) -> None:
        for share in self._routes.values():
            share.lease_held = False
            share.route.breaker.trial_needs_permit = False
            share.route.breaker.permit_trial()  # a trial waiting on the fleet's claim is decided here now
        self._on_state(False)

    async def _write_override(self, route: str, target: OverrideTarget, mode: str) -> bool:
        message = Message("override", route, self.origin, {"target": target, "mode": mode})
        field = f"{route}:{target}"

        async def write(client: redis.Redis) -> bool:
            async with client.pipeline(transaction=True) as pipe:
                if mode == "auto":
                    pipe.hdel(self.keys.overrides, field)
                else:
                    pipe.hset(self.keys.overrides, field, mode)
                pipe.publish(self.keys.channel, message.encode())
                await pipe.execute()
            return True

        return bool(await self.link.call(write))

    async def _keep_leases(self) -> None:
        """Hold or take each route's probe lease; runs until cancelled, survives every error."""
        while True:
            if self.up:
                try:
                    for name, share in self._routes.items():
                        await self._refresh_lease(name, share)
                except Exception:
                    log.exception("probe lease loop error")
            self._lease_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._lease_period):
                    await self._lease_wake.wait()

    async def _refresh_lease(self, name: str, share: _RouteShare) -> None:
        key = self.keys.probe_lease(name)
        if share.lease_held:
            renewed = await self.link.call(
                lambda client: client.eval(_RENEW_LEASE, 1, key, self.origin, self._lease_ttl_ms)
            )
            share.lease_held = bool(renewed) and self.up
            if not share.lease_held:
                log.info("probe lease lost route=%s", name)
        else:
            won = await self.link.call(lambda client: client.set(key, self.origin, nx=True, px=self._lease_ttl_ms))
            if won and self.up:
                share.lease_held = True
                log.info("probe lease taken route=%s", name)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _probe_result(fields: dict[str, Any]) -> ProbeResult:
    error = fields["error"]
    return ProbeResult(
        ok=bool(fields["ok"]),
        at=float(fields["at"]),
        latency=float(fields["latency"]),
        error=None if error is None else str(error),
    )
