"""The fleet against what goes wrong around it: odd peers, bad stored values, one process cut off.

Each test reproduces a defect a review found (a real redis-server, the simulator, full
gateway apps); the fleet must keep every promise of tests/test_fleet.py through them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from gateway.app_keys import FLEET, ROUTES
from gateway.fleet.messages import Keys
from gateway.simulator import SimFaults, Simulator
from gateway.workers import _fresh_metrics_dir
from monitoring.processes import eventually
from tests.fleet_support import ADMIN, Client, breaker, chat, fleet_member, fleet_routes, only_route_a, scope_of, trip
from tests.gateway_support import GatewayFactory
from tests.redis_support import RedisCutter, RedisServer


async def _pair_with_first_cut_off(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> tuple[Client, Client]:
    """Two members; the first reaches Redis through ``relay``, which is then cut."""
    prefix = redis_server.prefix()
    first = await fleet_member(make_gateway, sim, redis_server, prefix, redis_url=relay.url)
    second = await fleet_member(make_gateway, sim, redis_server, prefix)
    relay.cut()
    await eventually(lambda: not first.app[FLEET].up, within=3.0)
    return first, second



async def test_a_recovered_route_stays_closed_for_a_member_that_starts_later(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """The trial's success deletes the period's trip key, so a new member does not re-open a healed route."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 0.2, "probe_unhealthy_interval": 0.2}
    members = [
        await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=30, **probing)
        for _ in range(2)
    ]
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(members[0])
    await eventually(lambda: breaker(members[1]).state == "open", within=1.0)
    sim.set_faults(SimFaults(), route="a")
    # A probe ends the 30 s period at once; a live trial (whoever holds it) closes it everywhere.
    deadline = time.monotonic() + 5
    while any(breaker(m).state != "closed" for m in members):
        assert time.monotonic() < deadline, [breaker(m).state for m in members]
        await asyncio.gather(*(chat(m) for m in members))
        await asyncio.sleep(0.05)
    late = await fleet_member(make_gateway, sim, redis_server, prefix, **probing)
    await asyncio.sleep(0.3)  # messages and the re-sync have landed
    assert breaker(late).state == "closed"
    assert await chat(late) == 200


async def test_trips_are_ordered_by_arrival_not_by_a_peers_clock(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """A peer's trip with an id that sorts after everything does not hide later trips."""
    prefix = redis_server.prefix()
    first, second = [
        await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.3) for _ in range(2)
    ]
    odd = {"v": 1, "kind": "trip", "route": "a", "origin": "skewed-peer", "trip_id": "ffffffffffffffff-far-future"}
    odd["scope"] = scope_of(sim)
    await raw_redis.publish(Keys(prefix).channel, orjson.dumps({**odd, "open_for": 0.2, "duration": 0.3}))
    await eventually(lambda: all(breaker(m).state == "open" for m in (first, second)), within=1.0)
    # The short period ends in both; each got the message at its own moment, so wait for both
    # (a first still open from the odd trip would "trip" without a call and publish nothing).
    await eventually(lambda: all(breaker(m).state != "open" for m in (first, second)), within=2.0)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"open_for": "nan", "duration": 30},
        {"open_for": "inf", "duration": 30},
        {"open_for": -5, "duration": 30},
        {"open_for": 10, "duration": "nan"},
        {"open_for": True, "duration": 30},
        {"open_for": 10},
    ],
    ids=["nan", "inf", "negative", "nan-duration", "bool", "missing"],
)
async def test_a_malformed_trip_message_is_dropped(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis, fields: Any
) -> None:
    """Non-numbers, non-finite or negative values from a peer change nothing; sharing goes on."""
    prefix = redis_server.prefix()
    member = await fleet_member(make_gateway, sim, redis_server, prefix)
    message = {"v": 1, "kind": "trip", "route": "a", "origin": "broken-peer", "trip_id": "t1", **fields}
    message["scope"] = scope_of(sim)
    await raw_redis.publish(Keys(prefix).channel, orjson.dumps(message))
    await asyncio.sleep(0.3)
    assert breaker(member).state == "closed"
    assert member.app[FLEET].up


async def test_a_huge_open_period_from_a_peer_is_capped_at_the_reset_maximum(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """open_for 1e308 opens the route for at most GATEWAY_BREAKER_RESET_MAX_SECONDS, not forever."""
    prefix = redis_server.prefix()
    member = await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_max_seconds=60)
    message = {
        "v": 1,
        "kind": "trip",
        "route": "a",
        "origin": "p",
        "scope": scope_of(sim),
        "trip_id": "t1",
        "open_for": 1e308,
        "duration": 1e308,
    }
    await raw_redis.publish(Keys(prefix).channel, orjson.dumps(message))
    await eventually(lambda: breaker(member).state == "open", within=1.0)
    assert 0 < breaker(member).retry_after() <= 60
    assert breaker(member).current_open_duration == 60


async def test_malformed_stored_values_are_skipped_and_sharing_starts(
    make_gateway: GatewayFactory,
    sim: Simulator,
    redis_server: RedisServer,
    raw_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage in the trip, working and override keys: each is skipped with a warning; the member shares."""
    prefix = redis_server.prefix()
    keys = Keys(prefix)
    await raw_redis.set(keys.trip(scope_of(sim, "a")), b"not json", px=60_000)
    await raw_redis.set(keys.working(scope_of(sim, "b")), b'{"working": "yes"}', px=60_000)
    await raw_redis.hset(keys.overrides, mapping={b"\xff\xfe:breaker": b"{}", b"a:breaker": b'{"mode": "sideways"}'})
    member = await fleet_member(make_gateway, sim, redis_server, prefix)
    assert breaker(member).state == "closed"
    assert breaker(member).mode == "auto"
    assert member.app[ROUTES]["b"].flag.working
    assert sum("malformed" in record.message for record in caplog.records) >= 3


async def test_an_unusable_overrides_key_is_logged_once_not_reconnected_in_a_storm(
    make_gateway: GatewayFactory,
    sim: Simulator,
    redis_server: RedisServer,
    raw_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A string where the overrides hash belongs: the member decides alone, says so once, backs off."""
    prefix = redis_server.prefix()
    await raw_redis.set(Keys(prefix).overrides, b"x")
    caplog.set_level(logging.INFO, logger="gateway.fleet.link")
    gateway = await make_gateway(upstreams=fleet_routes(sim), redis_url=redis_server.url, redis_prefix=prefix)
    clients_before = (await raw_redis.info("stats"))["total_connections_received"]
    await asyncio.sleep(2.0)
    connections = (await raw_redis.info("stats"))["total_connections_received"] - clients_before
    assert not gateway.app[FLEET].up
    assert await chat(gateway) == 200
    warnings = [r for r in caplog.records if r.name == "gateway.fleet.link" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.message for r in warnings]
    assert connections <= 2 * 5, f"{connections} connections in 2 s"  # backoff 0.2, 0.4, 0.8 ... (two per attempt)


async def test_an_override_made_while_cut_off_does_not_undo_a_later_one(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> None:
    """A forces a open while cut off; B later sets auto; when A reconnects, auto stands everywhere."""
    first, second = await _pair_with_first_cut_off(make_gateway, sim, redis_server, relay)
    response = await first.post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is False
    await asyncio.sleep(0.01)  # a later command, by the same clock
    response = await second.post("/admin/breaker", json={"mode": "auto", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    relay.restore()
    await eventually(lambda: first.app[FLEET].up, within=10.0)
    await asyncio.sleep(0.3)
    assert (breaker(first).mode, breaker(second).mode) == ("auto", "auto")


async def test_an_override_made_while_cut_off_reaches_the_fleet_on_reconnection(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> None:
    """Nothing is lost: with no later command, A's change made while cut off is pushed when it is back."""
    first, second = await _pair_with_first_cut_off(make_gateway, sim, redis_server, relay)
    await first.post("/admin/working", json={"mode": "not_working", "route": "b"}, headers=ADMIN)
    relay.restore()
    await eventually(lambda: not second.app[ROUTES]["b"].flag.working, within=10.0)


async def test_a_trip_made_while_cut_off_is_shared_on_reconnection(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, relay: RedisCutter
) -> None:
    """A trips a alone while cut off; once A is back, B refuses a too."""
    first, second = await _pair_with_first_cut_off(make_gateway, sim, redis_server, relay)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    sim.set_faults(SimFaults(), route="a")  # B must learn it from A, not from failures of its own
    relay.restore()
    await eventually(lambda: first.app[FLEET].up, within=10.0)
    await eventually(lambda: breaker(second).state == "open", within=1.0)


async def test_stop_releases_only_a_lease_this_process_still_holds(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """A holder whose lease was taken over while it stalled does not delete its successor's lease."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 30.0}
    member = await fleet_member(make_gateway, sim, redis_server, prefix, **probing)
    await eventually(lambda: member.app[FLEET].snapshot()["probe_leases"] == ["a", "b"], within=3.0)
    lease = Keys(prefix).probe_lease(scope_of(sim))
    await raw_redis.set(lease, b"successor", px=60_000)
    await member.close()
    assert await raw_redis.get(lease) == b"successor"


def test_the_supervisor_empties_only_metric_files_of_a_configured_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROMETHEUS_MULTIPROC_DIR may hold other things: only *.db files of an earlier run go."""
    (tmp_path / "keep.txt").write_text("precious")
    (tmp_path / "counter_123.db").write_bytes(b"old samples")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert _fresh_metrics_dir() == str(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt"]


# Found by the second review: each failed on the code before its fix.


async def test_a_member_that_does_not_probe_takes_no_lease(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """A member with probes off holds no lease, so the member that probes keeps probing every route."""
    prefix = redis_server.prefix()
    quiet = await fleet_member(make_gateway, sim, redis_server, prefix, probe_enabled=False, probe_interval=0.3)
    await asyncio.sleep(0.5)
    assert quiet.app[FLEET].snapshot()["probe_leases"] == []
    probing = {"probe_enabled": True, "probe_interval": 0.3, "probe_unhealthy_interval": 0.3}
    await fleet_member(make_gateway, sim, redis_server, prefix, **probing)
    await asyncio.sleep(0.5)
    before = sim.route_stats("a").requests_total
    await asyncio.sleep(3.0)
    assert sim.route_stats("a").requests_total - before >= 5


async def test_an_override_given_during_a_resync_stands_and_reaches_the_fleet(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """A command given while a member re-syncs (over a slow link) is neither undone there nor lost."""
    slow = RedisCutter(redis_server.port, delay=0.04)
    await slow.start()
    try:
        prefix = redis_server.prefix()
        first = await fleet_member(make_gateway, sim, redis_server, prefix, redis_url=slow.url, redis_timeout=0.5)
        second = await fleet_member(make_gateway, sim, redis_server, prefix)
        slow.cut()
        await eventually(lambda: not first.app[FLEET].up, within=5.0)
        slow.restore()
        link = first.app[FLEET].link
        await eventually(lambda: link._client is not None and not link.up, within=10.0, step=0.002)
        await first.post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
        await eventually(lambda: link.up, within=5.0)
        await asyncio.sleep(0.5)
        assert (breaker(first).mode, breaker(second).mode) == ("forced_open", "forced_open")
    finally:
        await slow.stop()


async def test_a_redis_restart_does_not_drop_operator_overrides(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Redis restarts empty: the members write back the modes in force instead of falling back to auto."""
    prefix = redis_server.prefix()
    members = [await fleet_member(make_gateway, sim, redis_server, prefix) for _ in range(2)]
    response = await members[0].post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    await eventually(lambda: all(breaker(m).mode == "forced_open" for m in members), within=1.0)
    redis_server.kill()
    await eventually(lambda: not any(m.app[FLEET].up for m in members), within=3.0)
    redis_server.start()
    await eventually(lambda: all(m.app[FLEET].up for m in members), within=10.0)
    await asyncio.sleep(0.3)
    assert [breaker(m).mode for m in members] == ["forced_open", "forced_open"]
    late = await fleet_member(make_gateway, sim, redis_server, prefix)
    await eventually(lambda: breaker(late).mode == "forced_open", within=2.0)


async def test_a_member_joining_during_the_trial_window_starts_half_open_not_closed(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """After the open period ends but before its trial decides, a new member sends at most one call to a."""
    prefix = redis_server.prefix()
    first = await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.5)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    late = await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.5)
    before = sim.route_stats("a").requests_total
    statuses = await asyncio.gather(*(chat(late) for _ in range(6)))
    assert set(statuses) == {200}
    assert sim.route_stats("a").requests_total - before <= 1


async def _until_served(member: Client, seconds: float) -> list[int]:
    """Chat every 0.2 s until one is answered (or ``seconds`` pass); the statuses."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and 200 not in statuses:
        statuses.append(await chat(member))
        await asyncio.sleep(0.2)
    return statuses


async def test_a_trip_published_late_does_not_reopen_the_fleet_after_its_own_close(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Our trip's publish is slow; our trial closes the route meanwhile: peers see the trip, then the close."""
    prefix, extra = redis_server.prefix(), {"upstreams": only_route_a(sim), "breaker_reset_seconds": 0.5}
    first = await fleet_member(make_gateway, sim, redis_server, prefix, **extra)
    second = await fleet_member(make_gateway, sim, redis_server, prefix, **extra)
    link = first.app[FLEET].link
    call = link.call

    async def slow_trip_publish(fn: Any) -> Any:
        if getattr(fn, "__qualname__", "").endswith("publish_trip.<locals>.publish"):
            await asyncio.sleep(1.5)
        return await call(fn)

    link.call = slow_trip_publish  # type: ignore[method-assign]
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    sim.set_faults(SimFaults(), route="a")
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    statuses = await _until_served(first, 3.0)  # the first member's trial (nobody else knows the period)
    assert statuses[-1] == 200, statuses
    await asyncio.sleep(2.0)  # the late trip, and the close after it, have been delivered
    assert breaker(second).state == "closed"
    assert await chat(second) == 200


async def test_an_adopted_open_period_ends_at_a_jittered_moment(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """A peer's 10 s period is adopted for 8 to 12 s, and not for the same length by every member."""
    prefix = redis_server.prefix()
    members = [await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_max_seconds=60) for _ in range(4)]
    message = {"v": 1, "kind": "trip", "route": "a", "origin": "peer", "scope": scope_of(sim), "trip_id": "t1"}
    await raw_redis.publish(Keys(prefix).channel, orjson.dumps({**message, "open_for": 10, "duration": 10}))
    await eventually(lambda: all(breaker(member).state == "open" for member in members), within=1.0)
    rests = [breaker(member).retry_after() for member in members]
    assert all(7.5 <= rest <= 12.0 for rest in rests), rests
    assert len({round(rest, 2) for rest in rests}) > 1, rests


async def test_a_later_command_heard_while_ours_is_in_flight_wins_here_too(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stores "open"; before its reply is handled, B's "auto" is stored after it and heard by A: auto everywhere.

    Found by review: A recorded B's later command but kept its own mode, and nothing repaired it until the
    next command on that route (a re-sync saw Redis and the known command agree).
    """
    prefix = redis_server.prefix()
    first, second = [await fleet_member(make_gateway, sim, redis_server, prefix) for _ in range(2)]
    overrides = first.app[FLEET].overrides
    write = overrides._write

    async def overtaken(*args: Any) -> Any:
        reply = await write(*args)
        if args[2] == "open":  # stored: now B's command comes after it and reaches A first
            response = await second.post("/admin/breaker", json={"mode": "auto", "route": "a"}, headers=ADMIN)
            assert (await response.json())["shared"] is True
            await eventually(lambda: overrides._known[("a", "breaker")].mode == "auto", within=3.0)
        return reply

    monkeypatch.setattr(overrides, "_write", overtaken)
    response = await first.post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    assert (breaker(first).mode, breaker(second).mode) == ("auto", "auto")
