"""The fleet against what goes wrong around it: odd peers, bad stored values, one process cut off.

Each test reproduces a defect a review found (a real redis-server, the simulator, full
gateway apps); the fleet must keep every promise of tests/test_fleet.py through them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from gateway.app_keys import FLEET, ROUTES
from gateway.events import TrialAdmitted
from gateway.fleet import trips
from gateway.fleet.messages import Keys
from gateway.simulator import SimFaults, Simulator
from gateway.workers import _fresh_metrics_dir
from monitoring.processes import eventually
from tests.clock_support import FakeClock
from tests.fleet_support import ADMIN, Client, breaker, chat, fleet_member, fleet_routes, only_route_a
from tests.gateway_support import GatewayFactory, chat_body
from tests.redis_support import RedisCutter, RedisServer


@pytest.fixture(name="raw_redis")
async def raw_redis_fixture(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    """A plain client to the test's Redis, to write what a broken peer or operator would."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(name="cutter")
async def cutter_fixture(redis_server: RedisServer) -> AsyncIterator[RedisCutter]:
    """A relay in front of Redis for one member, which the test can cut."""
    relay = RedisCutter(redis_server.port)
    await relay.start()
    yield relay
    await relay.stop()


async def _pair_with_first_cut_off(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> tuple[Client, Client]:
    """Two members; the first reaches Redis through ``cutter``, which is then cut."""
    prefix = redis_server.prefix()
    first = await fleet_member(make_gateway, sim, redis_server, prefix, redis_url=cutter.url)
    second = await fleet_member(make_gateway, sim, redis_server, prefix)
    cutter.cut()
    await eventually(lambda: not first.app[FLEET].up, within=3.0)
    return first, second


async def _trip(member: Client) -> None:
    while breaker(member).state != "open":
        await chat(member)


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
    await _trip(members[0])
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
    await raw_redis.publish(Keys(prefix).channel, orjson.dumps({**odd, "open_for": 0.2, "duration": 0.3}))
    await eventually(lambda: all(breaker(m).state == "open" for m in (first, second)), within=1.0)
    # The short period ends in both; each got the message at its own moment, so wait for both
    # (a first still open from the odd trip would "trip" without a call and publish nothing).
    await eventually(lambda: all(breaker(m).state != "open" for m in (first, second)), within=2.0)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(first)
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
    await raw_redis.set(keys.trip("a"), b"not json", px=60_000)
    await raw_redis.set(keys.working("b"), b'{"working": "yes"}', px=60_000)
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
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> None:
    """A forces a open while cut off; B later sets auto; when A reconnects, auto stands everywhere."""
    first, second = await _pair_with_first_cut_off(make_gateway, sim, redis_server, cutter)
    response = await first.post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is False
    await asyncio.sleep(0.01)  # a later command, by the same clock
    response = await second.post("/admin/breaker", json={"mode": "auto", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    cutter.restore()
    await eventually(lambda: first.app[FLEET].up, within=10.0)
    await asyncio.sleep(0.3)
    assert (breaker(first).mode, breaker(second).mode) == ("auto", "auto")


async def test_an_override_made_while_cut_off_reaches_the_fleet_on_reconnection(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> None:
    """Nothing is lost: with no later command, A's change made while cut off is pushed when it is back."""
    first, second = await _pair_with_first_cut_off(make_gateway, sim, redis_server, cutter)
    await first.post("/admin/working", json={"mode": "not_working", "route": "b"}, headers=ADMIN)
    cutter.restore()
    await eventually(lambda: not second.app[ROUTES]["b"].flag.working, within=10.0)


async def test_a_trip_made_while_cut_off_is_shared_on_reconnection(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> None:
    """A trips a alone while cut off; once A is back, B refuses a too."""
    first, second = await _pair_with_first_cut_off(make_gateway, sim, redis_server, cutter)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(first)
    sim.set_faults(SimFaults(), route="a")  # B must learn it from A, not from failures of its own
    cutter.restore()
    await eventually(lambda: first.app[FLEET].up, within=10.0)
    await eventually(lambda: breaker(second).state == "open", within=1.0)


async def test_a_neutral_trial_gives_the_claim_back_at_once(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """The trial holder's call is rejected (400, neutral): the other member's next call is the trial."""
    prefix = redis_server.prefix()
    members = [await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.3) for _ in range(2)]
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(members[0])
    await eventually(lambda: breaker(members[1]).state == "open", within=1.0)
    sim.set_faults(SimFaults(reject_marker="REJECT-ME"), route="a")
    await eventually(lambda: all(breaker(m).state == "half_open" for m in members), within=2.0)
    await asyncio.sleep(0.2)  # the claim race has a winner
    holder = next(m for m in members if breaker(m).admits())
    other = members[1] if holder is members[0] else members[0]
    response = await holder.post("/v1/chat/completions", json=chat_body("REJECT-ME"))
    assert response.status == 400  # the neutral trial
    released = time.monotonic()
    while breaker(other).state != "closed":
        assert await chat(other) == 200
        assert time.monotonic() - released < 3.0, "the claim of a finished trial was held on"
        await asyncio.sleep(0.05)


async def test_stop_releases_only_a_lease_this_process_still_holds(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """A holder whose lease was taken over while it stalled does not delete its successor's lease."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 30.0}
    member = await fleet_member(make_gateway, sim, redis_server, prefix, **probing)
    await eventually(lambda: member.app[FLEET].snapshot()["probe_leases"] == ["a", "b"], within=3.0)
    lease = Keys(prefix).probe_lease("a")
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


async def test_reconnecting_while_half_open_does_not_make_a_second_trial_holder(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> None:
    """A member that went half-open while cut off races the fleet for the trial when it is back."""
    prefix = redis_server.prefix()
    first = await fleet_member(make_gateway, sim, redis_server, prefix, redis_url=cutter.url, breaker_reset_seconds=0.5)
    second = await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.5)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(second)
    await eventually(lambda: breaker(first).state == "open", within=1.0)
    cutter.cut()
    await eventually(lambda: not first.app[FLEET].up, within=3.0)
    await eventually(lambda: all(breaker(m).state == "half_open" for m in (first, second)), within=2.0)
    cutter.restore()
    await eventually(lambda: first.app[FLEET].up, within=10.0)
    await asyncio.sleep(0.3)  # the claim race settles
    assert sum(breaker(m).admits() for m in (first, second)) <= 1


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
    await _trip(first)
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    late = await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.5)
    before = sim.route_stats("a").requests_total
    statuses = await asyncio.gather(*(chat(late) for _ in range(6)))
    assert set(statuses) == {200}
    assert sim.route_stats("a").requests_total - before <= 1


async def test_a_trial_permit_never_outlives_its_claim(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Once the 1 s claim may have lapsed in Redis (a stalled loop, say), this member no longer admits a trial on it."""
    clock = FakeClock()
    prefix = redis_server.prefix()
    member = await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=30, clock=clock)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(member)
    sim.set_faults(SimFaults(), route="a")
    clock.advance(30)  # the open period ends; the member wins the claim for its trial
    await eventually(lambda: breaker(member).state == "half_open" and breaker(member).admits(), within=2.0)
    clock.advance(0.8)  # still within the claim's 1 s in Redis, but no longer safely
    assert breaker(member).state == "half_open"
    assert not breaker(member).admits()


async def test_one_claim_race_per_period_however_often_the_link_re_syncs(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """A re-sync while half-open does not start a second race next to one still running (they fought over the claim)."""
    member = await fleet_member(
        make_gateway, sim, redis_server, redis_server.prefix(), upstreams=only_route_a(sim), breaker_reset_seconds=0.3
    )
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(member)
    await eventually(lambda: breaker(member).state == "half_open", within=2.0)
    for _ in range(3):  # what a blip of the link does when it comes back (on_up), while the race sleeps
        await member.app[FLEET]._resync()
    assert _claim_races() == 1


def _claim_races() -> int:
    """Races for a trial claim running in this event loop (every member's)."""
    running = [task for task in asyncio.all_tasks() if not task.done()]
    return sum(getattr(task.get_coro(), "__qualname__", "") == "TripSharing.claim_trial" for task in running)


async def _one_route_member_tripped(
    make_gateway: GatewayFactory, sim: Simulator, redis: RedisServer, **extra: Any
) -> Client:
    member = await fleet_member(
        make_gateway, sim, redis, redis.prefix(), upstreams=only_route_a(sim), breaker_reset_seconds=0.3, **extra
    )
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(member)
    return member


async def _until_served(member: Client, seconds: float) -> list[int]:
    """Chat every 0.2 s until one is answered (or ``seconds`` pass); the statuses."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and 200 not in statuses:
        statuses.append(await chat(member))
        await asyncio.sleep(0.2)
    return statuses


async def test_a_link_blip_while_the_won_claim_waits_leaves_the_race_running(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> None:
    """Redis is cut and back within the claim's window: the process races again, the route recovers."""
    member = await _one_route_member_tripped(make_gateway, sim, redis_server, redis_url=cutter.url)
    sim.set_faults(SimFaults(), route="a")
    await eventually(lambda: breaker(member).admits(), within=2.0)  # half-open, the claim is ours
    cutter.cut()
    await eventually(lambda: not member.app[FLEET].up, within=1.0)
    cutter.restore()
    await eventually(lambda: member.app[FLEET].up, within=3.0)
    statuses = await _until_served(member, 5.0)
    assert statuses[-1] == 200, statuses


async def _trial_running_on_first(first: Client, second: Client, sim: Simulator) -> asyncio.Task[int]:
    """Trip a (on both), heal it slowly (4 s to the first token), and start the first member's trial."""
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    sim.set_faults(SimFaults(slow_first_token=4.0), route="a")
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    deadline = time.monotonic() + 5
    while not breaker(first).admits():  # refused callers are the demand that wins it the claim
        assert time.monotonic() < deadline
        await chat(first)
        await asyncio.sleep(0.05)
    trial = asyncio.create_task(chat(first))
    await eventually(lambda: sim.route_stats("a").active_streams == 1, within=1.0)
    return trial


async def test_a_blip_during_a_running_trial_neither_hands_its_claim_on_nor_admits_a_second(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> None:
    """Redis blips for the trial holder while its trial runs: no other trial, here or at a peer, until it ends."""
    prefix = redis_server.prefix()
    extra = {"upstreams": only_route_a(sim), "breaker_reset_seconds": 0.3, "timeout_first_token": 6.0}
    first = await fleet_member(make_gateway, sim, redis_server, prefix, redis_url=cutter.url, **extra)
    second = await fleet_member(make_gateway, sim, redis_server, prefix, **extra)
    trial = await _trial_running_on_first(first, second, sim)
    cutter.cut()
    await eventually(lambda: not first.app[FLEET].up, within=2.0)
    cutter.restore()
    await eventually(lambda: first.app[FLEET].up, within=3.0)
    while not trial.done():
        assert not breaker(first).admits(), "a second trial here while the first runs"
        assert await chat(second) == 503, "a trial at the peer while ours runs"
        await asyncio.sleep(0.05)
    assert await trial == 200
    assert sim.route_stats("a").active_streams == 0


async def test_a_trial_whose_claim_lapsed_before_it_was_sent_is_not_sent(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """A loop stall between admission and sending lets the claim lapse: the call is refused, not sent."""
    prefix, extra = redis_server.prefix(), {"upstreams": only_route_a(sim), "breaker_reset_seconds": 0.3}
    first = await fleet_member(make_gateway, sim, redis_server, prefix, **extra)
    second = await fleet_member(make_gateway, sim, redis_server, prefix, **extra)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    sim.set_faults(SimFaults(), route="a")
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    while not breaker(first).admits():
        await chat(first)
        await asyncio.sleep(0.05)
    # Stall the loop 2.5 s right at admission: longer than any claim lasts unconfirmed.
    first.app[ROUTES]["a"].events.subscribe(TrialAdmitted, lambda event: time.sleep(2.5))
    before = sim.route_stats("a").requests_total
    assert await chat(first) == 503
    assert sim.route_stats("a").requests_total == before


async def test_after_a_neutral_trial_the_next_caller_here_is_the_trial(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """The claim's permit still runs when the trial ends neutral: it passes to the next caller (arrow b6).

    (It also covers the rework that left no race after a neutral trial: the route stayed half-open.)
    """
    member = await _one_route_member_tripped(make_gateway, sim, redis_server)
    sim.set_faults(SimFaults(http_status=400), route="a")
    await eventually(lambda: breaker(member).admits(), within=2.0)  # half-open, the claim is ours
    assert await chat(member) == 400  # the trial, rejected: it decides nothing
    sim.set_faults(SimFaults(), route="a")
    assert await chat(member) == 200
    assert breaker(member).state == "closed"


async def test_a_trial_decided_while_redis_was_away_leaves_no_stale_claim_behind(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, cutter: RedisCutter
) -> None:
    """Our trial succeeds during a blip; back, the fleet's open period re-opens us: we must race and recover."""
    extra = {"upstreams": only_route_a(sim), "breaker_reset_seconds": 0.3, "timeout_first_token": 6.0}
    member = await fleet_member(make_gateway, sim, redis_server, redis_server.prefix(), redis_url=cutter.url, **extra)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(member)
    sim.set_faults(SimFaults(slow_first_token=1.0), route="a")
    await eventually(lambda: breaker(member).state == "half_open", within=2.0)
    deadline = time.monotonic() + 5
    while not breaker(member).admits():  # refused callers are the demand that wins it the claim
        assert time.monotonic() < deadline
        await chat(member)
        await asyncio.sleep(0.05)
    trial = asyncio.create_task(chat(member))
    await eventually(lambda: sim.route_stats("a").active_streams == 1, within=1.0)
    cutter.cut()
    await eventually(lambda: not member.app[FLEET].up, within=2.0)
    assert await trial == 200  # closed here; the fleet never heard (its trip key and our claim live on)
    cutter.restore()
    await eventually(lambda: member.app[FLEET].up, within=5.0)
    statuses = await _until_served(member, 4.0)  # the claim alone would keep it 9 s
    assert statuses[-1] == 200, statuses


async def _half_open_with_our_claim(
    make_gateway: GatewayFactory, sim: Simulator, redis: RedisServer, **extra: Any
) -> Client:
    """A one-route member, half-open with the claim won (callers' demand), upstream healthy."""
    member = await _one_route_member_tripped(make_gateway, sim, redis, timeout_first_token=6.0, **extra)
    sim.set_faults(SimFaults(), route="a")
    await eventually(lambda: breaker(member).state == "half_open", within=2.0)
    deadline = time.monotonic() + 5
    while not breaker(member).admits():
        assert time.monotonic() < deadline
        await chat(member)
        await asyncio.sleep(0.05)
    return member


async def test_a_trial_ending_neutral_while_the_race_holds_its_claim_after_a_blip_leaves_the_race_running(
    make_gateway: GatewayFactory,
    sim: Simulator,
    redis_server: RedisServer,
    cutter: RedisCutter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race re-takes the claim for our running trial; the trial ends neutral during that round trip."""
    member = await _half_open_with_our_claim(make_gateway, sim, redis_server, redis_url=cutter.url)
    member_breaker = breaker(member)
    ticket = member_breaker.admit()  # our trial, waiting for its first token
    assert ticket.trial
    assert await member_breaker.confirm_trial()
    extend = trips._extend_if_mine
    seen: list[str] = []

    async def neutral_end_during_the_extension(key: str, origin: str, ttl_ms: int, client: redis.Redis) -> Any:
        if not seen:
            seen.append(key)
            member_breaker.release(ticket)  # the client went away: neutral
        return await extend(key, origin, ttl_ms, client)

    monkeypatch.setattr(trips, "_extend_if_mine", neutral_end_during_the_extension)
    await eventually(lambda: _claim_races() == 0, within=3.0)  # the race left the claim to our trial
    cutter.cut()
    await eventually(lambda: not member.app[FLEET].up, within=2.0)
    cutter.restore()
    await eventually(lambda: member.app[FLEET].up, within=5.0)
    await eventually(lambda: bool(seen), within=3.0)
    statuses = await _until_served(member, 5.0)
    assert statuses[-1] == 200, statuses


async def test_with_two_trial_slots_one_neutral_end_keeps_the_claim_for_the_other(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """GATEWAY_BREAKER_HALF_OPEN_CALLS=2: the claim stays ours (no peer can win it) until the last trial ends."""
    member = await _half_open_with_our_claim(make_gateway, sim, redis_server, breaker_half_open_calls=2)
    member_breaker = breaker(member)
    tickets = [member_breaker.admit(), member_breaker.admit()]
    for _ in tickets:
        assert await member_breaker.confirm_trial()
    [key] = await raw_redis.keys("*:route:a:trial:*")
    await eventually(lambda: _claim_races() == 0, within=3.0)  # the race left the claim to our trials
    deletes = await _deletes(raw_redis)
    member_breaker.release(tickets[0])  # neutral
    await asyncio.sleep(0.3)  # a give-back would have landed
    # Never given back (and re-won a round trip later: a peer's race could land in between).
    assert await _deletes(raw_redis) == deletes
    assert await raw_redis.get(key) == member.app[FLEET].origin.encode()
    member_breaker.release(tickets[1])


async def _deletes(client: redis.Redis) -> int:
    """DEL commands the server has run so far (those of scripts included)."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_del", {}).get("calls", 0))


async def test_a_claim_reply_that_outlives_its_period_grants_no_permit_in_the_next(
    make_gateway: GatewayFactory,
    sim: Simulator,
    redis_server: RedisServer,
    raw_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A's claim for period X comes back slowly; meanwhile period Y opens and ends, and B wins Y's trial."""
    prefix = redis_server.prefix()
    extra = {"upstreams": only_route_a(sim), "breaker_reset_seconds": 0.3, "timeout_first_token": 6.0}
    first = await fleet_member(make_gateway, sim, redis_server, prefix, redis_timeout=1.0, **extra)
    second = await fleet_member(make_gateway, sim, redis_server, prefix, redis_timeout=1.0, **extra)
    origin, keys = first.app[FLEET].origin, Keys(prefix)
    claim, slow_reply_done = trips._claim_or_wait, asyncio.Event()
    old_key: list[str] = []

    async def slow_reply_for_the_old_period(key: str, who: str, ttl_ms: int, client: redis.Redis) -> Any:
        if who == origin and old_key and key == old_key[0] and not slow_reply_done.is_set():
            reply = await claim(key, who, ttl_ms, client)  # won in Redis at once ...
            slow_reply_done.set()
            await asyncio.sleep(0.6)  # ... but the answer takes a while (within the Redis timeout)
            return reply
        if who == origin and slow_reply_done.is_set():
            await asyncio.sleep(0.15)  # the first member's race for the new period comes second
        return await claim(key, who, ttl_ms, client)

    monkeypatch.setattr(trips, "_claim_or_wait", slow_reply_for_the_old_period)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    [trip_key] = await raw_redis.keys(f"{prefix}:route:a:trip")
    stored = await raw_redis.get(trip_key)
    assert stored is not None
    period_x = orjson.loads(stored)["trip_id"]
    old_key.append(keys.trial("a", period_x))
    await raw_redis.set(old_key[0], origin, px=3000)  # ours: the first member's race re-takes it
    sim.set_faults(SimFaults(slow_first_token=3.0), route="a")
    await asyncio.wait_for(slow_reply_done.wait(), 3.0)
    period_y = {"v": 1, "kind": "trip", "route": "a", "origin": "peer", "trip_id": "period-y"}
    await raw_redis.publish(keys.channel, orjson.dumps({**period_y, "open_for": 0.2, "duration": 0.3}))
    await eventually(lambda: breaker(second).admits(), within=2.0)  # the second member won Y's trial
    trials = [asyncio.create_task(chat(second))]
    most = 0
    for _ in range(30):  # 1.5 s: the first member's late reply lands and its callers come
        if breaker(first).admits():
            trials.append(asyncio.create_task(chat(first)))
        most = max(most, sim.route_stats("a").active_streams)
        await asyncio.sleep(0.05)
    await asyncio.gather(*trials)
    assert most == 1, "two trials of one route at once"


async def test_our_own_trip_delivered_after_our_period_ended_gets_its_trial_raced_for(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, raw_redis: redis.Redis
) -> None:
    """Half-open, we receive a trip of ours with a new id (its publish was slow): we race for that period's trial."""
    prefix = redis_server.prefix()
    member = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=only_route_a(sim), breaker_reset_seconds=0.3
    )
    sim.set_faults(SimFaults(http_status=500), route="a")
    await _trip(member)
    await eventually(lambda: breaker(member).state == "half_open", within=2.0)
    sim.set_faults(SimFaults(), route="a")
    late = {"v": 1, "kind": "trip", "route": "a", "origin": member.app[FLEET].origin, "trip_id": "late-own"}
    await raw_redis.publish(Keys(prefix).channel, orjson.dumps({**late, "open_for": 0.2, "duration": 0.3}))
    await asyncio.sleep(2.5)  # delivered, and the old period's race has stopped at the new id (within a round)
    statuses = await _until_served(member, 4.0)
    assert statuses[-1] == 200, statuses


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
    await _trip(first)
    sim.set_faults(SimFaults(), route="a")
    await eventually(lambda: breaker(first).state == "half_open", within=2.0)
    statuses = await _until_served(first, 3.0)  # the first member's trial (nobody else knows the period)
    assert statuses[-1] == 200, statuses
    await asyncio.sleep(2.0)  # the late trip, and the close after it, have been delivered
    assert breaker(second).state == "closed"
    assert await chat(second) == 200
