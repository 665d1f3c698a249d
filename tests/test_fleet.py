"""Two gateway processes' worth of fleet members, one real Redis, one simulator: shared decisions.

Each gateway here is a full app with its own Redis connections, breakers and probers, as a
separate process has; only the event loop is shared, which the fleet never relies on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.app_keys import FLEET, ROUTES
from gateway.events import BreakerChanged
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import eventually, free_port
from tests.fleet_support import ADMIN, Client, breaker, chat, fleet_member, trip
from tests.gateway_support import GatewayFactory
from tests.metrics_support import scrape, value
from tests.redis_support import RedisServer


async def test_a_trip_on_one_process_opens_the_route_on_the_other_within_a_second(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Route a fails on A: B refuses a within 1 s and sends it nothing, while both keep serving via b."""
    prefix = redis_server.prefix()
    first, second = [await fleet_member(make_gateway, sim, redis_server, prefix) for _ in range(2)]
    sim.set_faults(SimFaults(http_status=500), route="a")
    assert set(await trip(first)) == {200}  # failed over to b
    tripped = time.monotonic()
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    assert time.monotonic() - tripped < 1.0
    sent_to_a = sim.route_stats("a").requests_total
    assert [await chat(second) for _ in range(10)] == [200] * 10
    assert sim.route_stats("a").requests_total == sent_to_a  # B learnt from A: none of its calls went to a
    assert breaker(second).consecutive_failures == 0  # B paid no failures of its own


async def test_at_most_one_half_open_trial_per_process_per_open_period(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """While a stays broken and both processes keep sending, an open period lets at most one trial per process reach it."""
    prefix = redis_server.prefix()
    members = [await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.4) for _ in range(2)]
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(members[0])
    await eventually(lambda: all(breaker(member).state == "open" for member in members), within=1.0)
    half_opens = [0]

    def count(event: BreakerChanged) -> None:
        half_opens[0] += event.new == "half_open"

    for member in members:
        member.app[ROUTES]["a"].events.subscribe(BreakerChanged, count)
    before = sim.route_stats("a").requests_total
    deadline = time.monotonic() + 1.5  # about three open periods of 0.4 s, give or take the jitter and trials
    statuses: list[int] = []
    while time.monotonic() < deadline:
        statuses += await asyncio.gather(*(chat(member) for member in members for _ in range(4)))
    trials = sim.route_stats("a").requests_total - before
    assert set(statuses) == {200}  # the trials failed over to b
    assert half_opens[0] >= 2
    # Each half-open period of each process admits one trial (GATEWAY_BREAKER_HALF_OPEN_CALLS=1).
    assert 1 <= trials <= half_opens[0], f"{trials} calls reached a in {half_opens[0]} half-open periods"


async def test_one_probe_per_route_per_interval_across_the_fleet(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Two processes probing every 0.25 s cost the upstream about four probes a second per route, not eight."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 0.25, "probe_unhealthy_interval": 0.25}
    members = [await fleet_member(make_gateway, sim, redis_server, prefix, **probing) for _ in range(2)]
    await eventually(
        lambda: all(len([m for m in members if name in m.app[FLEET].snapshot()["probe_leases"]]) == 1 for name in "ab"),
        within=3,
    )
    before = {name: sim.route_stats(name).requests_total for name in "ab"}
    await asyncio.sleep(3.0)
    probes = {name: sim.route_stats(name).requests_total - before[name] for name in "ab"}
    for name, count in probes.items():
        # One prober: 12 in 3 s (interval jitter is +-10 %); two would send about 24.
        assert 9 <= count <= 15, f"route {name}: {count} probes in 3 s"
    holders = [m for m in members if "a" in m.app[FLEET].snapshot()["probe_leases"]]
    other = members[1] if holders[0] is members[0] else members[0]
    assert other.app[ROUTES]["a"].flag.last_probe is not None  # results reach the process that does not probe
    await holders[0].close()  # a clean stop releases the lease at once
    await eventually(lambda: "a" in other.app[FLEET].snapshot()["probe_leases"], within=1.0)


async def test_an_override_on_one_process_is_obeyed_by_the_others_and_by_later_ones(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Forcing a open and marking b not working on A reaches B at once and C when it starts later."""
    prefix = redis_server.prefix()
    first, second = [await fleet_member(make_gateway, sim, redis_server, prefix) for _ in range(2)]
    response = await first.post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
    assert response.status == 200
    assert (await response.json())["shared"] is True
    response = await first.post("/admin/working", json={"mode": "not_working", "route": "b"}, headers=ADMIN)
    assert (await response.json())["shared"] is True
    await eventually(lambda: breaker(second).mode == "forced_open", within=1.0)
    await eventually(lambda: not second.app[ROUTES]["b"].flag.working, within=1.0)
    assert await chat(second) == 503  # a forced open, b not working: nowhere to go

    late = await fleet_member(make_gateway, sim, redis_server, prefix)
    await eventually(lambda: breaker(late).mode == "forced_open" and not late.app[ROUTES]["b"].flag.working)

    await second.post("/admin/breaker", json={"mode": "auto"}, headers=ADMIN)
    await second.post("/admin/working", json={"mode": "auto"}, headers=ADMIN)
    for member in (first, late):
        await eventually(lambda m=member: breaker(m).mode == "auto" and m.app[ROUTES]["b"].flag.working)  # type: ignore[misc]
    assert await chat(late) == 200


async def _load(gateways: list[Client], *, seconds: float, concurrency: int) -> list[tuple[int, float]]:
    """Keep ``concurrency`` chats in flight per gateway for ``seconds``; every (status, latency)."""
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + seconds

    async def worker(gateway: Client) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            status = await chat(gateway)
            results.append((status, time.monotonic() - started))

    await asyncio.gather(*(worker(gateway) for gateway in gateways for _ in range(concurrency)))
    return results


async def test_redis_killed_under_load_fails_nothing_and_sharing_resumes_after_restart(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """SIGKILL Redis during load: 0 failed requests, shared_state_up 1 -> 0 -> 1, trips shared again after."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 0.3, "probe_unhealthy_interval": 0.3}
    members = [await fleet_member(make_gateway, sim, redis_server, prefix, **probing) for _ in range(2)]
    assert [value(await scrape(m), "gateway_shared_state_up") for m in members] == [1.0, 1.0]

    async def outage() -> list[float]:
        await asyncio.sleep(0.3)
        redis_server.kill()
        await eventually(lambda: not any(m.app[FLEET].up for m in members), within=3.0)
        during = [value(await scrape(m), "gateway_shared_state_up") for m in members]
        probes = sim.route_stats("a").requests_total
        await asyncio.sleep(1.0)  # alone, each process still probes for itself
        assert sim.route_stats("a").requests_total > probes
        redis_server.start()
        return during

    results, during = await asyncio.gather(_load(members, seconds=2.0, concurrency=4), outage())
    assert during == [0.0, 0.0]
    assert results
    assert {status for status, _ in results} == {200}, f"{len(results)} requests"
    await eventually(lambda: all(m.app[FLEET].up for m in members), within=10.0)
    assert [value(await scrape(m), "gateway_shared_state_up") for m in members] == [1.0, 1.0]

    sim.set_faults(SimFaults(http_status=500), route="a")  # the restarted Redis carries trips again
    await trip(members[0])
    await eventually(lambda: breaker(members[1]).state == "open", within=1.0)


async def test_a_paused_redis_costs_requests_nothing_and_admin_calls_only_the_timeout(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """SIGSTOP Redis: chats at concurrency 16 never wait on it; an admin change returns shared=false in ~0.1 s."""
    prefix = redis_server.prefix()
    members = [await fleet_member(make_gateway, sim, redis_server, prefix) for _ in range(2)]
    redis_server.pause()
    results = await _load(members, seconds=1.5, concurrency=8)
    assert {status for status, _ in results} == {200}
    # redis-py's default retries turn one call to a hung server into ~5 s; nothing here may wait on Redis.
    assert max(latency for _, latency in results) < 1.0
    await eventually(lambda: not any(m.app[FLEET].up for m in members), within=3.0)
    started = time.monotonic()
    response = await members[0].post("/admin/breaker", json={"mode": "open", "route": "a"}, headers=ADMIN)
    assert (await response.json())["shared"] is False  # applied here, pushed on reconnection
    assert time.monotonic() - started < 1.0
    assert breaker(members[0]).mode == "forced_open"
    redis_server.resume()
    await eventually(lambda: all(m.app[FLEET].up for m in members), within=10.0)
    await eventually(lambda: breaker(members[1]).mode == "forced_open", within=2.0)  # the pending change arrived


async def test_a_member_with_traffic_recovers_on_its_own_and_its_close_reaches_the_others(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Only B gets traffic after a heals: B's own trial closes a when its period ends, and A closes with it."""
    prefix = redis_server.prefix()
    first, second = [
        await fleet_member(make_gateway, sim, redis_server, prefix, breaker_reset_seconds=0.3) for _ in range(2)
    ]
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    sim.set_faults(SimFaults(), route="a")
    started = time.monotonic()
    while breaker(second).state != "closed":
        assert await chat(second) == 200
        assert time.monotonic() - started < 2.0, "recovery waited on something other than B's own trial"
        await asyncio.sleep(0.02)
    await eventually(lambda: breaker(first).state == "closed", within=1.0)  # B's success closes A too


async def test_a_member_joining_a_fleet_that_probed_recently_does_not_probe_at_start(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Restarting N workers costs the upstream no burst of N probes: the fleet's last results are adopted."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 30.0, "probe_unhealthy_interval": 30.0}
    first = await fleet_member(make_gateway, sim, redis_server, prefix, **probing)
    await eventually(lambda: all(first.app[ROUTES][name].flag.last_probe is not None for name in "ab"), within=3.0)
    before = {name: sim.route_stats(name).requests_total for name in "ab"}
    late = await fleet_member(make_gateway, sim, redis_server, prefix, **probing)
    await asyncio.sleep(0.5)
    assert {name: sim.route_stats(name).requests_total - before[name] for name in "ab"} == {"a": 0, "b": 0}
    assert all(late.app[ROUTES][name].flag.last_probe is not None for name in "ab")  # adopted, not sent


async def test_a_member_that_cannot_reach_redis_at_start_probes_at_once(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Waiting to join the fleet ends when Redis refuses: the process probes alone, not an interval later."""
    gateway = await make_gateway(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", probe_enabled=True, probe_interval=30.0
    )
    await eventually(lambda: gateway.app[ROUTES]["default"].flag.last_probe is not None, within=3.0)
    assert not gateway.app[FLEET].up


async def test_status_says_per_route_what_is_shared_with_whom_and_who_opened_it(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """/status: each route's scope and egress group, and an open period marked local here and fleet on a peer."""
    prefix = redis_server.prefix()
    first = await fleet_member(make_gateway, sim, redis_server, prefix, egress="eu-nat")
    second = await fleet_member(make_gateway, sim, redis_server, prefix)

    async def shared(member: Client) -> dict[str, Any]:
        response = await member.get("/status")
        routes: dict[str, Any] = (await response.json())["shared_state"]["routes"]
        return routes

    routes = await shared(first)
    assert routes["a"]["egress"] == "eu-nat"
    assert routes["a"]["path_failures_shared"] is True
    assert routes["a"]["open_period"] is None
    assert (await shared(second))["a"]["path_failures_shared"] is False
    assert routes["a"]["upstream_scope"] == (await shared(second))["a"]["upstream_scope"]  # same name, URL, proxy
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await eventually(lambda: breaker(second).state == "open", within=1.0)
    mine, theirs = (await shared(first))["a"]["open_period"], (await shared(second))["a"]["open_period"]
    assert (mine["opened_by"], theirs["opened_by"]) == ("local", "fleet")
    assert mine["trip_id"] == theirs["trip_id"]
    page = await (await second.get("/ui/data")).json()
    assert next(r for r in page["routes"] if r["name"] == "a")["breaker"]["opened_by"] == "fleet"
    assert "opened by the fleet" in await (await second.get("/ui")).text()
    samples = await scrape(second)
    labels = {"provider": "flowgpt", "route": "a", "to_state": "open"}
    assert value(samples, "gateway_breaker_transitions_total", **labels, source="fleet") == 1
    assert value(samples, "gateway_breaker_transitions_total", **labels, source="local") == 0
