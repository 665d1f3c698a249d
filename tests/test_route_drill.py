"""End to end with two routes: one route down is a ticket and nothing pages; all down pages; healed, all resolve.

The real stack (simulator, gateway with routes a and b, Prometheus with the shipped
rules and ``for:`` shortened, Alertmanager, webhook receiver) in separate processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from monitoring.processes import wait_until
from monitoring.stack import DRILL_FOR_OVERRIDES, Stack, StackOptions

pytestmark = pytest.mark.slow

LIMIT = 120.0  # the whole run; about 25 s on an idle 2-core machine
PHASE = 40.0
BROKEN = {"http_status": 503}


async def _route_working(stack: Stack, name: str) -> bool:
    _, body = await stack.gateway.readiness()
    return bool(next(route["working"] for route in body["routes"] if route["name"] == name))


def _notified(stack: Stack, alertname: str, status: str, receiver: str, since: float) -> Callable[[], bool]:
    def check() -> bool:
        found = stack.webhook.find(alertname, status, since=since)
        return found is not None and found[0].receiver == receiver

    return check


async def _until(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    async def probe() -> bool:
        result = check()
        return bool(await result) if asyncio.iscoroutine(result) else bool(result)

    await wait_until(probe, within=PHASE, what=what, interval=0.2)


def _fired(stack: Stack, alertname: str) -> list[str]:
    return [
        note.receiver
        for note in stack.webhook.notifications
        for alert in note.alerts
        if alert.alertname == alertname and alert.status == "firing"
    ]


async def _quiet(stack: Stack) -> bool:
    active = {alert.alertname for alert in await stack.prometheus.alerts()}
    return not active & {"GatewayRouteNotWorking", "GatewayUpstreamNotWorking"}


async def test_one_route_down_is_a_ticket_all_down_pages_and_both_resolve() -> None:
    """Break a: GatewayRouteNotWorking reaches the ticket receiver, no page; break b: the page; heal: resolved."""
    overrides = {**DRILL_FOR_OVERRIDES, "GatewayRouteNotWorking": "2s"}
    stack = Stack(StackOptions(routes=("a", "b"), for_overrides=overrides))
    try:
        async with stack, asyncio.timeout(LIMIT):
            started = time.monotonic()
            await stack.simulator.set_faults(BROKEN, route="a")
            await _until(lambda: _route_working(stack, "b"), "route b to keep working")
            await _until(_notified(stack, "GatewayRouteNotWorking", "firing", "ticket", started), "the route ticket")
            assert not await _route_working(stack, "a")
            assert (await stack.gateway.chat()).status == 200  # served by b
            assert _fired(stack, "GatewayUpstreamNotWorking") == []

            all_down = time.monotonic()
            await stack.simulator.set_faults(BROKEN, route="b")
            await _until(_notified(stack, "GatewayUpstreamNotWorking", "firing", "pager", all_down), "the page")
            refused = await stack.gateway.chat()
            assert (refused.status, refused.code) == (503, "upstream_not_working")
            # The page replaces the ticket: one alert for one problem.
            await _until(_notified(stack, "GatewayRouteNotWorking", "resolved", "ticket", all_down), "the ticket quiet")

            healed = time.monotonic()
            await stack.simulator.heal(route="a")
            await stack.simulator.heal(route="b")
            await _until(_notified(stack, "GatewayUpstreamNotWorking", "resolved", "pager", healed), "the page resolved")
            await _until(lambda: _quiet(stack), "no route alert active in Prometheus")
            assert set(_fired(stack, "GatewayRouteNotWorking")) == {"ticket"}
            assert set(_fired(stack, "GatewayUpstreamNotWorking")) == {"pager"}
    finally:
        stack.kill_all()
