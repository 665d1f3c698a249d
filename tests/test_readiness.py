"""Honest readiness at start-up: 503 "not yet probed" until a route answered a probe, within GATEWAY_READY_GRACE."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.events import ProbeResult
from gateway.simulator import SimFaults, Simulator
from gateway.working import WorkingFlag
from tests.gateway_support import GatewayFactory

Client = TestClient[web.Request, web.Application]
POLL = 0.02


async def _poll_until(gateway: Client, done: Any, limit: float) -> list[tuple[float, int, dict[str, Any]]]:
    """Every /readyz answer, with the seconds since the first poll, until ``done(body)`` or ``limit``."""
    seen: list[tuple[float, int, dict[str, Any]]] = []
    started = time.monotonic()
    while time.monotonic() - started < limit:
        response = await gateway.get("/readyz")
        body = await response.json()
        seen.append((time.monotonic() - started, response.status, body))
        if done(body):
            return seen
        await _sleep()
    raise AssertionError(f"condition not reached within {limit}s: {seen[-1]}")


async def _sleep() -> None:
    await asyncio.sleep(POLL)


def _probes(body: dict[str, Any]) -> int:
    return sum(int(route["probes_total"]) for route in body["routes"])


async def test_arrow_w0_not_yet_probed_until_the_first_probe_answers(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Before the first probe answers /readyz is 503 "not yet probed" (flag "checking"); after it, 200."""
    sim.faults = SimFaults(slow_first_token=0.4)
    gateway = await make_gateway(probe_enabled=True)
    seen = await _poll_until(gateway, lambda body: _probes(body) > 0, limit=5)
    before = seen[:-1]
    assert before, "the first probe answered before the first poll"
    for _, status, body in before:
        assert status == 503
        assert body["reason"] == "not yet probed"
        assert body["routes"][0]["state"] in {"unknown", "checking"}
    assert any(body["routes"][0]["state"] == "checking" for _, _, body in before)
    _, status, body = seen[-1]
    assert status == 200
    assert body["routes"][0]["state"] == "working"
    assert "reason" not in body


async def test_a_bad_token_is_never_ready(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """An upstream answering 401 gives 503 within one probe's time, never 200, despite a threshold of 2."""
    sim.faults = SimFaults(http_status=401)
    gateway = await make_gateway(probe_enabled=True, probe_unhealthy_threshold=2, probe_interval=60)
    seen = await _poll_until(gateway, lambda body: _probes(body) > 0, limit=2)
    assert seen[-1][0] < 2.0
    assert [status for _, status, _ in seen] == [503] * len(seen)
    assert all(body["reason"] == "not yet probed" for _, _, body in seen[:-1])
    body = seen[-1][2]
    assert body["reason"] == "no route is working"
    assert body["routes"][0]["state"] == "not_working"
    assert body["routes"][0]["consecutive_failures"] == 1  # down at once, not after the threshold of 2
    more: list[dict[str, Any]] = []
    for _ in range(5):  # and it stays so: a 401 does not heal by itself
        response = await gateway.get("/readyz")
        assert response.status == 503
        more.append(await response.json())
        await _sleep()
    assert all(b["reason"] == "no route is working" for b in more)


async def test_grace_bounds_the_wait_for_a_hanging_upstream(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """An upstream that never answers the probe: "not yet probed" until GATEWAY_READY_GRACE, then the flags."""
    sim.faults = SimFaults(slow_first_token=30)
    grace = 0.5
    gateway = await make_gateway(probe_enabled=True, ready_grace=grace, probe_timeout=10, timeout_first_token=10)
    seen = await _poll_until(gateway, lambda body: body["ready"], limit=grace + 3)
    assert _probes(seen[-1][2]) == 0, "the probe answered: this test needs it to hang"
    assert all(status == 503 and body["reason"] == "not yet probed" for _, status, body in seen[:-1])
    # The poll's own clock starts after the app's, so the 200 comes no later than the grace.
    assert seen[-1][0] <= grace + 0.5
    assert seen[-1][1] == 200


async def test_without_the_probe_ready_at_once(gateway: Client) -> None:
    """With GATEWAY_PROBE_ENABLED=false there is nothing to wait for: 200 from the first request."""
    response = await gateway.get("/readyz")
    assert response.status == 200
    assert (await response.json())["routes"][0]["state"] == "unknown"


def _flag() -> WorkingFlag:
    return WorkingFlag(healthy_threshold=1, unhealthy_threshold=2, clock=time.monotonic)


@pytest.mark.parametrize("kind", ["auth", "blocked"])
def test_arrow_w0_first_fatal_failure_marks_the_route_down_at_once(kind: str) -> None:
    """A first probe failing with auth or blocked turns the flag off without waiting for the threshold."""
    flag = _flag()
    before: str = flag.state
    flag.record(ProbeResult(ok=False, at=0.0, latency=0.1, error="no", kind=kind))
    assert (before, flag.state) == ("unknown", "not_working")
    assert not flag.working


def test_later_failures_keep_the_hysteresis() -> None:
    """After a first verdict, an auth failure counts like any other (one of two does not flip the flag)."""
    flag = _flag()
    flag.record(ProbeResult(ok=True, at=0.0, latency=0.1))
    flag.record(ProbeResult(ok=False, at=1.0, latency=0.1, error="no", kind="auth"))
    assert flag.working
    flag.record(ProbeResult(ok=False, at=2.0, latency=0.1, error="no", kind="timeout"))
    assert flag.state == "not_working"


def test_first_timeout_keeps_the_hysteresis() -> None:
    """A first failure that may heal (a timeout) waits for the threshold as before, and claims nothing yet."""
    flag = _flag()
    flag.record(ProbeResult(ok=False, at=0.0, latency=0.1, error="slow", kind="timeout"))
    assert flag.working  # traffic is still admitted: one failure is below the threshold
    assert flag.state == "unknown"  # but no probe has passed: the flag does not say "working"


async def _statuses(gateway: Client, seconds: float) -> list[tuple[int, dict[str, Any]]]:
    """Every /readyz answer, polled every 20 ms for ``seconds``."""
    seen: list[tuple[int, dict[str, Any]]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        response = await gateway.get("/readyz")
        seen.append((response.status, await response.json()))
        await asyncio.sleep(0.02)
    return seen


async def test_a_route_down_at_start_and_another_still_checking_is_not_ready(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Two routes with a bad token, b's probe slower: one verdict "down" is no reason to say ready."""
    routes = json.dumps([{"name": name, "url": sim.route_url(name)} for name in ("a", "b")])
    sim.set_faults(SimFaults(http_status=401), route="a")
    sim.set_faults(SimFaults(http_status=401, error_body_chunks=2, error_chunk_delay=1.5), route="b")
    gateway = await make_gateway(upstreams=routes, probe_enabled=True, probe_interval=60, ready_grace=30)
    seen = await _statuses(gateway, 1.0)
    assert 200 not in [status for status, _ in seen]


async def test_a_first_probe_that_fails_below_the_threshold_is_not_ready_yet(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """A 500 on the first probe (threshold 2): neither ready nor shown as working; the flag says unknown."""
    sim.faults = SimFaults(http_status=500)
    gateway = await make_gateway(probe_enabled=True, probe_interval=60, probe_unhealthy_threshold=2, ready_grace=30)
    seen = await _statuses(gateway, 0.6)
    probed = [(status, body) for status, body in seen if body["routes"][0]["probes_total"] > 0]
    assert probed
    assert all(status == 503 for status, _ in probed)
    assert {body["routes"][0]["state"] for _, body in probed} <= {"unknown", "checking"}
