"""Scopes: a replica's own path trouble stays its own; outages and an egress group's trouble are shared.

Members here are full gateway apps with their own Redis connections sharing one real redis-server
and one simulator. Two members of route ``a`` differ only in their token, and the simulator blocks
one token (``only_token``): the same route name, URL and proxy, one host's way out blocked.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.app_keys import FLEET, ROUTES, TIMELINE
from gateway.errors import UpstreamBlockedError, UpstreamStatusError, UpstreamTimeoutError
from gateway.scope import Scopes
from gateway.simulator import SimFaults, SimOptions, Simulator
from monitoring.processes import eventually
from tests.fleet_support import Client, breaker, chat, fleet_member, trip
from tests.gateway_support import GatewayFactory
from tests.redis_support import RedisServer

BLOCKED = SimFaults(http_status=403, http_body="cloudflare", only_token="token-b")


@pytest.fixture(name="sim")
async def sim_fixture() -> AsyncIterator[Simulator]:
    """A simulator that takes any account's token (the members here sign with token-a and token-b)."""
    async with Simulator(SimOptions(check_signature=False)) as simulator:
        yield simulator


def _route_a(sim: Simulator, token: str) -> str:
    return json.dumps([{"name": "a", "url": sim.route_url("a"), "token": token}])


async def _pair(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, **extra: Any
) -> tuple[Client, Client]:
    """Members A (token-a) and B (token-b) of one route ``a``, sharing state under one prefix."""
    prefix = redis_server.prefix()
    members = [
        await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=_route_a(sim, token), **extra)
        for token in ("token-a", "token-b")
    ]
    return members[0], members[1]


async def test_a_replica_whose_path_is_blocked_costs_the_healthy_replica_nothing(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """B's Cloudflare block opens B's breaker again and again; A keeps serving (at least 95 %, here all)."""
    first, second = await _pair(make_gateway, sim, redis_server, breaker_reset_seconds=0.3)
    sim.set_faults(BLOCKED, route="a")
    served, sent, b_trips = 0, 0, 0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        statuses = await asyncio.gather(chat(first), chat(second))
        sent += 1
        served += statuses[0] == 200
        b_trips += breaker(second).state == "open"
        await asyncio.sleep(0.05)
    assert b_trips > 0  # B was blocked and tripped
    assert served >= 0.95 * sent, f"A served {served} of {sent}"
    assert breaker(first).state == "closed"
    readyz = await (await first.get("/readyz")).json()
    assert "Cloudflare" not in json.dumps(readyz)  # B's trouble is not shown as A's


async def test_replicas_of_one_egress_group_share_a_block_within_a_second(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """With GATEWAY_EGRESS set alike, B's block is A's too: A refuses a within 1 s without a failure of its own."""
    first, second = await _pair(make_gateway, sim, redis_server, egress="nat-1")
    sim.set_faults(BLOCKED, route="a")
    await trip(second)
    tripped = time.monotonic()
    await eventually(lambda: breaker(first).state == "open", within=1.0)
    assert time.monotonic() - tripped < 1.0
    assert breaker(first).consecutive_failures == 0


async def test_a_blocked_replicas_trip_stays_its_own_when_a_5xx_ends_the_streak(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """B is blocked twice, then one 5xx trips it: the streak was mostly B's path, so the trip stays B's (no
    egress group is declared) and A keeps the route. Before, the last failure's 5xx took it upstream-wide."""
    first, second = await _pair(make_gateway, sim, redis_server, breaker_fail_max=3, retry_max=0)
    sim.set_faults(BLOCKED, route="a")
    await chat(second)
    await chat(second)
    assert breaker(second).state == "closed"
    sim.set_faults(SimFaults(http_status=500), route="a")
    await chat(second)
    assert breaker(second).state == "open"
    period = second.app[FLEET].snapshot()["routes"]["a"]["open_period"]
    assert (period["opened_by"], period["scope"]) == ("local", None)  # decided at the trip: nobody to tell
    said = [event["reason"] for event in second.app[TIMELINE].events()]
    assert any(reason.endswith("(earlier: upstream blocked the request (Cloudflare challenge))") for reason in said)
    sim.set_faults(SimFaults(), route="a")
    await asyncio.sleep(1.0)  # and nothing told A: a shared trip reaches a peer well within this
    assert breaker(first).state == "closed"
    assert breaker(first).consecutive_failures == 0
    assert await chat(first) == 200


async def test_a_blocked_lease_holder_hands_the_probing_over_and_its_failures_stay_its_own(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """B holds the probe lease and its path gets blocked: A takes the lease over, and A's flag never shows B's error."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 0.2, "probe_unhealthy_interval": 0.2}
    second = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=_route_a(sim, "token-b"), **probing
    )
    await eventually(lambda: second.app[ROUTES]["a"].flag.last_probe is not None, within=3.0)  # B holds the lease
    first = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=_route_a(sim, "token-a"), **probing)
    sim.set_faults(BLOCKED, route="a")
    await eventually(lambda: "a" in first.app[FLEET].snapshot()["probe_leases"], within=3.0)
    await asyncio.sleep(0.5)  # A probes, B's later attempts (if any) fail
    flag = first.app[ROUTES]["a"].flag
    assert flag.working
    assert flag.last_probe is not None
    assert flag.last_probe.ok
    assert await chat(first) == 200
    # /status says who probes the route now and why the other does not (A's results reach B: not stale). On a
    # loaded host A's results can reach B two probe intervals (0.4 s) late, and B then rightly probes for itself
    # until the next one arrives: read until both settle, within a bound.
    expected = {"A": (True, True, False), "B": (False, False, False)}
    deadline = time.monotonic() + 5.0
    while True:
        seen = {}
        for name, member in (("A", first), ("B", second)):
            route = (await (await member.get("/status")).json())["shared_state"]["routes"]["a"]
            seen[name] = (route["probe_lease"], route["probes_here"], route["probe_results_stale"])
            assert route["probe_sitting_out_seconds"] >= 0
        if seen == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert seen == expected


async def test_routes_whose_url_or_proxy_differ_never_share_whatever_their_names(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """Route ``a`` at two different URLs: a 5xx trip on one does not open the other."""
    prefix = redis_server.prefix()
    first = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=json.dumps([{"name": "a", "url": sim.route_url("a")}])
    )
    second = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=json.dumps([{"name": "a", "url": sim.route_url("other")}])
    )
    sim.set_faults(SimFaults(http_status=500), route="a")
    await trip(first)
    await asyncio.sleep(0.5)
    assert breaker(second).state == "closed"
    assert await chat(second) == 200


def test_scopes_put_path_failures_in_the_egress_group_and_outages_in_the_upstream_scope() -> None:
    """The rule as a table: upstream-down kinds go wide, path kinds only to a declared egress group."""
    alone = Scopes.of("a", "https://x.example/v3", "http://user:secret@10.0.0.5:3128", None)
    grouped = Scopes.of("a", "https://x.example/v3", "http://other:creds@10.0.0.5:3128", "nat-1")
    assert alone.upstream == grouped.upstream  # credentials are not the path; the proxy's host is
    assert "secret" not in alone.upstream
    for cause in ("http_5xx", "timeout", "protocol", "interrupted"):
        assert alone.for_failure(cause) == alone.upstream
    path_kinds: tuple[str | None, ...] = (
        "connect", "blocked", "rate_limited", "auth", "http_other", "probe_timeout", "unknown", None
    )
    for path_kind in path_kinds:
        assert alone.for_failure(path_kind) is None
        assert grouped.for_failure(path_kind) == grouped.egress
    assert Scopes.of("a", "https://x.example/v3", "http://10.0.0.6:3128", None).upstream != alone.upstream
    assert Scopes.of("b", "https://x.example/v3", "http://10.0.0.5:3128", None).upstream != alone.upstream


def test_a_failures_cause_tells_a_path_apart_from_the_upstream() -> None:
    """Connect timeouts and non-5xx statuses are causes one host's path may have; a 5xx and a late timeout are not."""
    assert UpstreamTimeoutError("t", phase="connect").cause == "connect"
    assert UpstreamTimeoutError("t", phase="first_token").cause == "timeout"
    assert UpstreamStatusError("s", upstream_status=503).cause == "http_5xx"
    assert UpstreamStatusError("s", upstream_status=403).cause == "http_other"
    assert UpstreamStatusError("s", upstream_status=407).cause == "http_other"
    assert UpstreamBlockedError("b", upstream_status=403).cause == "blocked"


async def test_a_lease_holder_whose_path_is_blocked_leaves_the_probing_to_a_peer(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """An outage marks B not working through A's probes; then the upstream heals but A's path is blocked: B recovers."""
    prefix = redis_server.prefix()
    probing = {"probe_enabled": True, "probe_interval": 0.2, "probe_unhealthy_interval": 0.2}
    first = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=_route_a(sim, "token-a"), **probing)
    await eventually(lambda: first.app[ROUTES]["a"].flag.last_probe is not None, within=3.0)  # A holds the lease
    second = await fleet_member(make_gateway, sim, redis_server, prefix, upstreams=_route_a(sim, "token-b"), **probing)
    sim.set_faults(SimFaults(http_status=500), route="a")
    await eventually(lambda: not second.app[ROUTES]["a"].flag.working, within=3.0)
    sim.set_faults(SimFaults(http_status=403, http_body="cloudflare", only_token="token-a"), route="a")
    await eventually(lambda: second.app[ROUTES]["a"].flag.working, within=3.0)
    assert await chat(second) == 200


class _NoSynAck:
    """A session whose connects time out: this host's egress drops SYNs (a firewall, a dead NAT)."""

    async def post(self, *args: Any, **kwargs: Any) -> Any:
        raise aiohttp.ConnectionTimeoutError("connect timed out")


async def test_one_hosts_connect_timeouts_stay_its_own(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B cannot connect (timeouts, not refusals), no egress group: A stays closed and serves."""
    first, second = await _pair(make_gateway, sim, redis_server)
    monkeypatch.setattr(second.app[ROUTES]["a"].client, "_session", _NoSynAck())
    await trip(second)
    await asyncio.sleep(0.5)
    assert breaker(first).state == "closed", "B's path trouble opened A"
    assert await chat(first) == 200


async def test_one_hosts_plain_403_stays_its_own(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """B's egress address gets a WAF's plain 403 (no Cloudflare page): not shared without an egress group."""
    first, second = await _pair(make_gateway, sim, redis_server)
    sim.set_faults(SimFaults(http_status=403, http_body="Access denied", only_token="token-b"), route="a")
    await trip(second)
    await asyncio.sleep(0.5)
    assert breaker(first).state == "closed", "B's address block opened A"


async def test_a_peers_close_does_not_end_a_members_own_longer_period_of_another_scope(
    make_gateway: GatewayFactory, sim: Simulator, redis_server: RedisServer
) -> None:
    """B is open 30 s for its own blocked path; A's 5xx trip and close leave B's own period alone."""
    prefix = redis_server.prefix()
    first = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=_route_a(sim, "token-a"), breaker_reset_seconds=0.5
    )
    second = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=_route_a(sim, "token-b"), breaker_reset_seconds=30
    )
    sim.set_faults(BLOCKED, route="a")
    await trip(second)
    sim.set_faults(SimFaults(http_status=500, only_token="token-a"), route="a")  # A sees an outage
    await trip(first)
    sim.set_faults(BLOCKED, route="a")
    deadline = time.monotonic() + 3.0
    while breaker(first).state != "closed" and time.monotonic() < deadline:
        await chat(first)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert breaker(first).state == "closed"
    assert breaker(second).state == "open", "B's own 30 s period (its path is still blocked) was closed by A"
