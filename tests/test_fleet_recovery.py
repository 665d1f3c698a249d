"""A member never stays open, half-open or refused because of something it missed.

Each test reproduces what a hostile review of the claim-based fleet found (a real redis-server,
the simulator, full gateway apps, a relay that cuts or silences one member's Redis connections).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from gateway.app_keys import FLEET, METRICS
from gateway.fleet.messages import Keys
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import eventually
from tests.fleet_support import ADMIN, breaker, chat, fleet_member, only_route_a, scope_of, trip
from tests.gateway_support import GatewayFactory
from tests.redis_support import RedisCutter, RedisServer


async def test_a_member_that_missed_the_fleets_close_closes_on_reconnection(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> None:
    """B is cut off while A's trial closes the route; back 0.5 s later, B serves at once, not after 30 s."""
    prefix, one_route = redis_server.prefix(), only_route_a(sim)
    probing = {"probe_enabled": True, "probe_interval": 0.2, "probe_unhealthy_interval": 0.2}
    first = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=30, **probing
    )
    second = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=30, redis_url=relay.url
    )
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    relay.cut()
    await eventually(lambda: not second.app[FLEET].up, within=3.0)
    sim.set_faults(SimFaults(), route="a")
    # A's probe ends its 30 s period; its next live call is the trial that closes the route.
    deadline = time.monotonic() + 5.0
    while breaker(first).state != "closed":
        assert time.monotonic() < deadline
        await chat(first)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    relay.restore()
    await eventually(lambda: second.app[FLEET].up, within=5.0)
    await eventually(lambda: breaker(second).state == "closed", within=1.0)
    assert await chat(second) == 200


async def test_a_silent_subscription_counts_as_shared_state_down(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> None:
    """B's pub/sub connection stays open but delivers nothing: within 3 s B reports sharing down and decides alone."""
    member = await fleet_member(make_gateway, sim, redis_server, redis_server.prefix(), redis_url=relay.url)
    relay.hold_subscriptions()
    started = time.monotonic()
    await eventually(lambda: not member.app[FLEET].up, within=3.0)
    down_after = time.monotonic() - started
    assert member.app[METRICS].registry.get_sample_value("gateway_shared_state_up") == 0
    assert await chat(member) == 200
    relay.release_subscriptions()
    await eventually(lambda: member.app[FLEET].up, within=10.0)
    assert down_after < 3.0


async def test_a_probe_lease_without_expiry_is_taken_over(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """A stray lease key with no TTL (a dead holder's, a hand-made one) does not stop the fleet probing."""
    prefix = redis_server.prefix()
    await raw_redis.set(Keys(prefix).probe_lease(scope_of(sim, "a")), b"ghost")
    probing = {"probe_enabled": True, "probe_interval": 0.3}
    member = await fleet_member(make_gateway, sim, redis_server, prefix, **probing)
    await eventually(lambda: "a" in member.app[FLEET].snapshot()["probe_leases"], within=2.0)
    assert await raw_redis.pttl(Keys(prefix).probe_lease(scope_of(sim, "a"))) > 0


async def test_a_trip_key_without_expiry_is_deleted_not_obeyed(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """A stray trip key with no TTL opens nothing and is repaired (deleted) by the first member that reads it."""
    prefix = redis_server.prefix()
    key = Keys(prefix).trip(scope_of(sim, "a"))
    await raw_redis.set(key, orjson.dumps({"trip_id": "stray", "duration": 30, "trial_ms": 1000}))
    member = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=only_route_a(sim))
    assert breaker(member).state == "closed"
    assert await raw_redis.exists(key) == 0
    assert await chat(member) == 200


async def test_a_member_that_vanishes_mid_trial_does_not_hold_up_its_peers(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> None:
    """A's trial hangs and A vanishes from Redis; B's own trial closes the route as soon as B's period ends."""
    prefix, one_route = redis_server.prefix(), only_route_a(sim)
    first = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=0.3, redis_url=relay.url
    )
    second = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=0.3)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    sim.set_faults(SimFaults(slow_first_token=30), route="a")
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    hanging = asyncio.create_task(chat(first))  # A's trial: no first token for 30 s
    await eventually(lambda: breaker(first).trials_running == 1, within=2.0)
    relay.cut()  # A is gone as far as the fleet can tell
    sim.set_faults(SimFaults(), route="a")
    started = time.monotonic()
    statuses: list[int] = []
    while 200 not in statuses:
        assert time.monotonic() - started < 2.0, statuses
        statuses.append(await chat(second))
        await asyncio.sleep(0.05)
    hanging.cancel()
    await asyncio.gather(hanging, return_exceptions=True)


async def test_an_operators_fleet_wide_reset_leaves_no_open_period_behind(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """POST /admin/breaker auto (every route) deletes the trip key: a member started after it serves at once."""
    prefix, one_route = redis_server.prefix(), only_route_a(sim)
    first = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=60)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    key = Keys(prefix).trip(scope_of(sim, "a"))
    for _ in range(100):  # the trip's publish is in the background
        if await raw_redis.exists(key):
            break
        await asyncio.sleep(0.01)
    assert await raw_redis.exists(key) == 1
    sim.set_faults(SimFaults(), route="a")
    response = await first.post("/admin/breaker", json={"mode": "auto"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    assert await raw_redis.exists(key) == 0
    late = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=60)
    assert breaker(late).state == "closed"
    assert [await chat(late) for _ in range(5)] == [200] * 5


async def test_a_later_command_wins_whatever_the_clock_of_the_host_that_gave_the_earlier_one(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's clock runs an hour ahead when it forces a open; B's later auto is shared and obeyed by both."""
    prefix = redis_server.prefix()
    first, second = [await fleet_member(make_gateway, sim, redis_server, prefix) for _ in range(2)]
    real_time_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + 3_600 * 10**9)
    monkeypatch.setattr(time, "time", lambda: real_time_ns() / 1e9 + 3_600)
    response = await first.post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    monkeypatch.undo()
    await eventually(lambda: breaker(second).mode == "forced_open", within=1.0)
    response = await second.post("/admin/breaker", json={"mode": "auto", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    await eventually(lambda: (breaker(first).mode, breaker(second).mode) == ("auto", "auto"), within=1.0)


async def test_a_close_made_while_cut_off_is_published_on_reconnection(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> None:
    """A's trial closes the route while A is cut off; back, A publishes the close (and does not re-trip itself)."""
    prefix, one_route = redis_server.prefix(), only_route_a(sim)
    first = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=0.3, redis_url=relay.url
    )
    second = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=one_route, breaker_reset_seconds=30)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    relay.cut()
    await eventually(lambda: not first.app[FLEET].up, within=3.0)
    sim.set_faults(SimFaults(), route="a")
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    assert await chat(first) == 200  # the trial: closed here, the close not published
    relay.restore()
    await eventually(lambda: first.app[FLEET].up, within=5.0)
    await eventually(lambda: breaker(second).state == "closed", within=1.0)
    assert breaker(first).state == "closed"
    assert await chat(second) == 200


async def test_concurrent_operator_commands_end_the_same_everywhere(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """A (slow link) forces a open while B forces it closed: both end with the command Redis took last."""
    prefix = redis_server.prefix()
    relay = RedisCutter(redis_server.port, delay=0.05)
    await relay.start()
    try:
        first = await fleet_member(make_gateway, sim, redis_server, prefix, redis_url=relay.url, redis_timeout=2.0)
        second = await fleet_member(make_gateway, sim, redis_server, prefix, redis_timeout=2.0)

        async def later_closed() -> Any:
            await asyncio.sleep(0.01)
            return await second.post("/admin/breaker", json={"mode": "closed", "route": "a"}, headers=ADMIN)

        await asyncio.gather(
            first.post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN), later_closed()
        )
        await asyncio.sleep(1.0)
        client = redis.Redis.from_url(redis_server.url)
        stored = orjson.loads(await client.hget(Keys(prefix).overrides, "a:breaker") or b"{}")
        await client.aclose()
        expected = {"open": "forced_open", "closed": "forced_closed"}[stored["mode"]]
        assert (breaker(first).mode, breaker(second).mode) == (expected, expected), stored
    finally:
        await relay.stop()


async def test_after_redis_restarts_empty_a_member_takes_a_later_command_it_missed(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Redis restarts empty (the count starts over); B, away meanwhile, obeys the command given after."""
    prefix = redis_server.prefix()
    relay = RedisCutter(redis_server.port)
    await relay.start()
    try:
        first = await fleet_member(make_gateway, sim, redis_server, prefix)
        second = await fleet_member(make_gateway, sim, redis_server, prefix, redis_url=relay.url)
        for mode in ("open", "closed", "open"):
            await first.post("/admin/breaker", json={"mode": mode, "route": "a"}, headers=ADMIN)
        await eventually(lambda: breaker(second).mode == "forced_open", within=1.0)
        relay.cut()
        await eventually(lambda: not second.app[FLEET].up, within=3.0)
        redis_server.kill()
        await eventually(lambda: not first.app[FLEET].up, within=5.0)
        redis_server.start()
        await eventually(lambda: first.app[FLEET].up, within=10.0)  # A writes its open back
        response = await first.post("/admin/breaker", json={"mode": "auto", "route": "a"}, headers=ADMIN)
        assert (await response.json())["shared"] is True
        relay.restore()
        await eventually(lambda: second.app[FLEET].up, within=10.0)
        await asyncio.sleep(0.3)
        assert (breaker(first).mode, breaker(second).mode) == ("auto", "auto")
    finally:
        await relay.stop()


async def test_a_closed_route_shows_no_open_period_after_its_own_trip_comes_back_late(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """A slow Redis brings our own trip back after the trial closed the route: /status shows no open period."""
    relay = RedisCutter(redis_server.port, delay=0.15)
    await relay.start()
    try:
        member = await fleet_member(
            make_gateway,
            sim,
            redis_server,
            redis_server.prefix(),
            redis_url=relay.url,
            redis_timeout=3.0,
            upstreams=only_route_a(sim),
            breaker_reset_seconds=0.05,
        )
        sim.set_faults(SimFaults(http_status=500), route="a")
        await trip(member)
        sim.set_faults(SimFaults(), route="a")
        await asyncio.sleep(0.1)
        assert await chat(member) == 200  # the trial closes it before its own trip comes back
        assert breaker(member).state == "closed"
        await asyncio.sleep(2.5)
        assert member.app[FLEET].snapshot()["routes"]["a"]["open_period"] is None
    finally:
        await relay.stop()
