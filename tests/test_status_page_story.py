"""The status page tells what happened, in a real headless Chromium: timeline, scales, failovers and client 5xx."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page

from gateway.app_keys import ROUTES
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import StackError, eventually, wait_until
from tests.browser_support import PageWatch
from tests.gateway_support import GatewayFactory, chat_body
from tests.metrics_support import scrape, value
from tests.test_status_page_browser import BLOCKED, SEEN_WITHIN_MS, browser_fixture, open_page, routed

pytestmark = pytest.mark.slow
__all__ = ["browser_fixture"]  # the Chromium fixture, shared with the page's other browser tests

Client = TestClient[web.Request, web.Application]
CHAT = {"route": "/v1/chat/completions", "method": "POST"}


async def _events(page: Page) -> list[str]:
    """The timeline's lines as the page shows them, newest first."""
    return [line.strip() for line in await page.locator("#events li").all_inner_texts()]


async def _wait_for_line(page: Page, pattern: str) -> None:
    """Wait until a timeline line matches ``pattern`` (a regular expression)."""
    await page.wait_for_function(
        "(p) => [...document.querySelectorAll('#events li')].some((li) => new RegExp(p).test(li.textContent))",
        arg=pattern,
        timeout=SEEN_WITHIN_MS + 5000,
    )


async def test_timeline_tells_the_break_and_the_heal_with_reasons(
    browser: Browser, make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Route b blocked then healed: the timeline shows the probe and the flag going down and back, in plain words."""
    gateway = await routed(make_gateway, sim)
    routes = gateway.app[ROUTES]
    await eventually(lambda: all(route.flag.probed for route in routes), within=5)
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    sim.set_faults(BLOCKED, route="b")
    await _wait_for_line(page, r"\bb working: working → not working: 1 failed probe: upstream blocked the request")
    await _wait_for_line(page, r"\bb probe: passing → failing: upstream blocked the request \(Cloudflare challenge\)")
    assert re.search(r"down for \d+ s", await page.text_content('tr[data-route="b"] [data-cell="since"]') or "")
    sim.set_faults(SimFaults(), route="b")
    await _wait_for_line(page, r"\bb working: not working → working: the probe passed")
    lines = await _events(page)
    newest = " | ".join(lines[:2])  # the healing probe and the flag it turned on, newest first
    assert re.search(r"\d\d:\d\d:\d\d UTC \(\d+ s ago\) b working: not working → working", newest), newest
    assert "b probe: failing → passing: the probe got its first token" in newest
    assert not any(line.startswith(("a ", "a:")) for line in lines)
    went_down = await page.text_content('tr[data-route="b"] [data-cell="downtime"]') or ""
    assert re.fullmatch(r"1 down, \d+ s in total", went_down), went_down
    assert await page.text_content('tr[data-route="b"] [data-cell="working"]') == "on"
    assert watch.complaints() == []


async def test_sparklines_carry_their_scale(browser: Browser, make_gateway: GatewayFactory, sim: Simulator) -> None:
    """After traffic each sparkline is labelled with its peak: per second for rates, ms for the first token."""
    gateway = await routed(make_gateway, sim)
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    for _ in range(20):
        await (await gateway.post("/v1/chat/completions", json=chat_body())).read()
    row = 'tr[data-route="a"] '
    await page.wait_for_function(
        "(s) => !/max 0\\.00\\/s/.test(document.querySelector(s).textContent)",
        arg=row + '[data-scale="requests"]',
        timeout=SEEN_WITHIN_MS + 3000,
    )
    assert re.fullmatch(r"max \d+\.\d\d/s", await page.text_content(row + '[data-scale="requests"]') or "")
    assert re.fullmatch(r"max \d+\.\d\d/s", await page.text_content(row + '[data-scale="failures"]') or "")
    await page.wait_for_function(
        "(s) => /max \\d+ ms/.test(document.querySelector(s).textContent)",
        arg=row + '[data-scale="first_token"]',
        timeout=SEEN_WITHIN_MS + 3000,
    )
    title = await page.text_content(row + 'svg[data-spark="requests"] title') or ""
    scale = await page.text_content(row + '[data-scale="requests"]') or ""
    assert title.endswith("peak " + scale.removeprefix("max "))
    assert watch.complaints() == []


async def _cells(page: Page) -> dict[str, Any]:
    """Failovers and client errors per route, and the chat 5xx clients received, as the page shows them."""

    def number(text: str | None) -> int:
        return int((text or "0").replace(",", ""))

    shown: dict[str, Any] = {"5xx": number(await page.text_content('#received [data-key="5xx"] .num'))}
    for name in ("a", "b"):
        for cell in ("failovers", "client_errors"):
            shown[f"{name}.{cell}"] = number(await page.text_content(f'tr[data-route="{name}"] [data-cell="{cell}"]'))
    return shown


async def test_failover_and_client_5xx_counts_match_metrics(
    browser: Browser, make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Route a blocked (failovers to b), then both (5xx): the page's counts are exactly /metrics'."""
    gateway = await routed(make_gateway, sim, probe_enabled=False, breaker_fail_max=3)
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    sim.set_faults(BLOCKED, route="a")
    for _ in range(12):
        await (await gateway.post("/v1/chat/completions", json=chat_body())).read()
    sim.set_faults(BLOCKED, route="b")
    for _ in range(6):
        await (await gateway.post("/v1/chat/completions", json=chat_body())).read()
    samples = await scrape(gateway)
    five_xx = sum(
        count
        for (name, labels), count in samples.items()
        if name == "gateway_http_requests_total"
        and dict(labels).get("route") == CHAT["route"]
        and dict(labels)["code"].startswith("5")
    )
    expected = {"5xx": five_xx}
    for name in ("a", "b"):
        expected[f"{name}.failovers"] = value(samples, "gateway_failovers_total", from_route=name)
        expected[f"{name}.client_errors"] = value(samples, "gateway_route_client_errors_total", route=name)
    assert expected["a.failovers"] > 0
    assert expected["b.client_errors"] > 0
    assert expected["5xx"] > expected["b.client_errors"]  # the refusals after b's breaker opened too
    shown: dict[str, Any] = {}

    async def matches() -> bool | None:
        shown.update(await _cells(page))
        return shown == expected or None

    try:
        await wait_until(matches, within=SEEN_WITHIN_MS / 1000 + 3, what="page counts", interval=0.1)
    except StackError:
        assert shown == expected  # says which count differs
    assert watch.complaints() == []
