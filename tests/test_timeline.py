"""The event timeline: plain-word reasons for every state change, per-route up/down clocks, a measured memory bound."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from types import SimpleNamespace
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app_keys import ROUTES
from gateway.events import EventBus, ProbeFinished, ProbeResult
from gateway.route_pool import Route
from gateway.simulator import SimFaults, Simulator
from gateway.timeline import MAX_EVENTS, MAX_REASON_CHARS, MEMORY_BOUND, RouteClock, Timeline, TimelineEvent
from monitoring.processes import eventually
from tests.clock_support import FakeClock
from tests.gateway_support import GatewayFactory, chat_body

Client = TestClient[web.Request, web.Application]
BLOCKED = SimFaults(http_status=403, http_body="cloudflare")


def _stub_route(name: str) -> Route:
    """A route as the timeline sees it: a name, a bus, a flag and a breaker, and a health record that is up."""
    flag = SimpleNamespace(working=True, last_probe=None, consecutive_failures=0)
    breaker = SimpleNamespace(state="closed", mode="auto")
    health = SimpleNamespace(up=True)
    stub = SimpleNamespace(name=name, events=EventBus(), flag=flag, breaker=breaker, health=lambda model=None: health)
    return cast("Route", stub)


def _deep_size(timeline: Timeline) -> int:
    """Bytes the events take: the deque, each record, its strings and its float."""
    events: Any = timeline._events  # measuring the store itself
    total = sys.getsizeof(events)
    for event in events:
        assert isinstance(event, TimelineEvent)
        total += sys.getsizeof(event) + sum(
            sys.getsizeof(getattr(event, field)) for field in ("at", "route", "kind", "old", "new", "reason")
        )
    return total


def test_memory_bound_holds_with_every_string_at_its_longest() -> None:
    """A thousand probe flips with 500-character errors on a 32-character route: 100 events kept, under the bound."""
    timeline = Timeline(fail_max=5, clock=FakeClock())
    route = _stub_route("r" * 32)
    timeline.watch(route)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(1000):
            error = f"{index:04d}" + "x" * 496
            result = ProbeResult(ok=index % 2 == 1, at=float(index), latency=0.1, error=None if index % 2 else error)
            route.events.publish(ProbeFinished(route.name, result, started=0.0))
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    events = timeline.events()
    assert len(events) == MAX_EVENTS
    assert max(len(event["reason"]) for event in events) == MAX_REASON_CHARS
    measured = _deep_size(timeline)
    assert measured <= MEMORY_BOUND, measured
    assert allocated <= MEMORY_BOUND, allocated


def test_route_clock_counts_flaps_and_downtime() -> None:
    """Two down periods of 3 s and 4 s (the second still running): 2 flaps, 7 s down, age since the last change."""
    clock = FakeClock()
    route_clock = RouteClock(clock)
    clock.advance(10)
    route_clock.set(False)
    clock.advance(3)
    route_clock.set(True)
    route_clock.set(True)  # no change, no flap
    clock.advance(5)
    route_clock.set(False)
    clock.advance(4)
    assert (route_clock.flaps, route_clock.downtime(), route_clock.age(), route_clock.up) == (2, 7.0, 4.0, False)


async def test_break_and_heal_are_told_with_reasons(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Blocked live traffic trips the breaker ("3 failures: upstream blocked ..."), probes flip the flag, healing shows."""
    gateway = await make_gateway(
        breaker_fail_max=3, retry_max=0, probe_enabled=True, probe_interval=0.2, probe_unhealthy_interval=0.2
    )
    route = gateway.app[ROUTES]["default"]
    await eventually(lambda: route.flag.probed, within=5)
    sim.faults = BLOCKED
    for _ in range(3):
        await (await gateway.post("/v1/chat/completions", json=chat_body())).read()
    await eventually(lambda: not route.flag.working, within=5)
    sim.faults = SimFaults()
    await eventually(lambda: route.flag.working, within=5)
    for _ in range(100):  # a passing probe half-opens the breaker; a live trial closes it
        if route.breaker.state == "closed":
            break
        await (await gateway.post("/v1/chat/completions", json=chat_body())).read()
        await asyncio.sleep(0.05)
    events = (await (await gateway.get("/status")).json())["events"]
    said = [(e["kind"], e["old"], e["new"], e["reason"]) for e in reversed(events)]
    assert ("breaker", "closed", "open", "3 failures: upstream blocked the request (Cloudflare challenge)") in said
    assert any(kind == "working" and new == "not working" and "failed probe" in why for kind, _, new, why in said)
    assert ("working", "not working", "working", "the probe passed") in said
    assert any(kind == "probe" and (old, new) == ("passing", "failing") for kind, old, new, _ in said)
    assert all(isinstance(e["at"], float) and e["route"] == "default" for e in events)
