"""One health record per route: picking, refusal, /readyz, /status and the status page all say what Route.health() says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app_keys import INFLIGHT, ROUTES
from gateway.events import BreakerChanged, WorkingChanged
from gateway.route_pool import Route
from gateway.simulator import SimFaults, Simulator
from tests.clock_support import FakeClock
from tests.gateway_support import GatewayFactory, chat_body

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"
Setup = Callable[[Client, Route, Simulator, FakeClock], Awaitable[None]]


async def _closed(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    """Fresh: working by default (not yet probed), breaker closed."""


async def _probe_passed(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    assert (await route.prober.probe_once()).ok


async def _tripped(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    sim.faults = SimFaults(http_status=500)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    sim.faults = SimFaults()


async def _half_open(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    await _tripped(gateway, route, sim, clock)
    clock.advance(31)  # past the 30 s open period: reads half-open, no trial running


async def _forced_open(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    route.breaker.force_open()


async def _forced_closed(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    await _tripped(gateway, route, sim, clock)
    route.breaker.force_closed()


async def _failing_probes(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    sim.faults = SimFaults(http_status=503)
    for _ in range(2):
        assert not (await route.prober.probe_once()).ok
    sim.faults = SimFaults()


async def _pinned_not_working(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    route.flag.set_mode("not_working")


async def _pinned_working_while_open(gateway: Client, route: Route, sim: Simulator, clock: FakeClock) -> None:
    await _failing_probes(gateway, route, sim, clock)
    route.flag.set_mode("working")
    await _tripped(gateway, route, sim, clock)


STATES: dict[str, tuple[Setup, dict[str, Any]]] = {
    # name: (how to get there, what the record must say there)
    "closed": (_closed, {"flag": "unknown", "breaker": "closed", "admits": True, "up": True, "confirmed": False}),
    "probe passed": (_probe_passed, {"flag": "working", "admits": True, "up": True, "confirmed": True}),
    "open": (_tripped, {"flag": "unknown", "breaker": "open", "admits": False, "up": False}),
    "half-open": (_half_open, {"breaker": "half_open", "admits": True, "up": True}),
    "forced open": (_forced_open, {"breaker": "open", "breaker_mode": "forced_open", "admits": False, "up": False}),
    "forced closed": (_forced_closed, {"breaker": "closed", "breaker_mode": "forced_closed", "admits": True}),
    "probes failing": (_failing_probes, {"flag": "not_working", "working": False, "admits": False, "up": False}),
    "pinned not working": (_pinned_not_working, {"flag_mode": "not_working", "working": False, "admits": False}),
    "pinned working, open": (_pinned_working_while_open, {"flag": "working", "confirmed": True, "breaker": "open"}),
}


@pytest.mark.parametrize("state", list(STATES))
async def test_every_surface_agrees_with_the_health_record(
    make_gateway: GatewayFactory, sim: Simulator, state: str
) -> None:
    """For a route in each state, the pick, the refusal, /readyz, /status and /ui/data say what health() says."""
    clock = FakeClock()
    gateway = await make_gateway(clock=clock, breaker_fail_max=1, retry_max=0, breaker_reset_seconds=30)
    routes = gateway.app[ROUTES]
    route = routes["default"]
    setup, expected = STATES[state]
    await setup(gateway, route, sim, clock)

    health = route.health()
    assert {key: getattr(health, key) for key in expected} == expected  # the state is the one named
    readyz = await gateway.get("/readyz")
    ready = await readyz.json()
    status = (await (await gateway.get("/status")).json())["readiness"]
    page = await (await gateway.get("/ui/data")).json()

    # Picking and early refusal.
    assert route.admits() is health.admits
    assert (routes.pick() is route) is health.admits
    assert routes.any_admits() is health.admits
    assert (route.refusal() is None) is health.admits
    refusal, expected_refusal = route.refusal(), health.refusal  # the same refusal, read without the record
    assert type(refusal) is type(expected_refusal)
    if refusal is not None and expected_refusal is not None:
        assert (refusal.message, refusal.retry_after) == (expected_refusal.message, expected_refusal.retry_after)
    assert (routes.refusal() is None) is health.admits
    # /readyz and /status: the same body from the same record (the probe is off, so working is ready).
    for body in (ready, status):
        assert (body["ready"], body["working"]) == (health.working, health.working)
        shown = body["routes"][0]
        assert (shown["working"], shown["state"], shown["mode"]) == (health.working, health.flag, health.flag_mode)
        breaker = shown["breaker"]
        assert (breaker["state"], breaker["mode"]) == (health.breaker, health.breaker_mode)
        assert breaker["retry_after"] == health.retry_after
    assert readyz.status == (200 if health.working else 503)
    # The status page.
    shown = page["routes"][0]
    assert (shown["up"], shown["working"]) == (health.up, health.working)
    assert (shown["working_state"], shown["working_mode"]) == (health.flag, health.flag_mode)
    assert (shown["breaker"]["state"], shown["breaker"]["mode"]) == (health.breaker, health.breaker_mode)
    assert shown["breaker"]["retry_after"] == (round(health.retry_after, 1) if health.open else None)
    assert page["state"] == ("serving" if health.up else "down")


async def test_reading_health_changes_nothing(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """health() is a query: read after an open period ended, it publishes nothing and reads the same each time."""
    clock = FakeClock()
    gateway = await make_gateway(clock=clock, breaker_fail_max=1, retry_max=0, breaker_reset_seconds=30)
    route = gateway.app[ROUTES]["default"]
    await _half_open(gateway, route, sim, clock)
    seen: list[object] = []
    for kind in (BreakerChanged, WorkingChanged):
        route.events.subscribe(kind, seen.append)
    first = route.health()
    assert first.breaker == "half_open"
    assert [route.health() for _ in range(3)] == [first] * 3
    assert seen == []


async def test_a_refused_request_asks_each_breaker_once(
    make_gateway: GatewayFactory, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early refusal reads each route's breaker once, before the handler is tracked: it runs thousands of times a second."""
    gateway = await make_gateway(breaker_fail_max=1, retry_max=0)
    route = gateway.app[ROUTES]["default"]
    route.breaker.force_open()
    decisions: list[str | None] = []
    decide = route.breaker.decision

    def counted(model: str | None = None) -> Any:
        decisions.append(model)
        return decide(model)

    monkeypatch.setattr(route.breaker, "decision", counted)
    tracker = gateway.app[INFLIGHT]
    tracked: list[object] = []
    track = tracker.track

    def noted() -> Any:
        tracked.append(1)
        return track()

    monkeypatch.setattr(tracker, "track", noted)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "circuit_open"
    assert decisions == [None]
    assert tracked == []  # a refusal awaits nothing: it is not tracked for the drain
    route.breaker.automatic()
    assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert tracked == [1]  # an admitted call is
