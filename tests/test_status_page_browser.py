"""The status page in a real headless Chromium, against the simulator: it loads clean and follows the routes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page

from gateway.app_keys import ROUTES
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import eventually
from tests.browser_support import PageWatch, chromium
from tests.gateway_support import GatewayFactory

pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]
REFRESH = 0.3  # seconds between the page's refreshes in these tests
BLOCKED = SimFaults(http_status=403, http_body="cloudflare")
# The probe's cadence and thresholds make the gateway notice within a few tenths of a second.
FAST = {
    "ui_refresh_seconds": REFRESH,
    "ui_sample_seconds": 0.2,
    "probe_enabled": True,
    "probe_interval": 0.2,
    "probe_unhealthy_interval": 0.2,
    "probe_healthy_threshold": 1,
    "probe_unhealthy_threshold": 1,
}
SEEN_WITHIN_MS = (2 * REFRESH + 2.0) * 1000  # one refresh plus one in flight, and slack for a busy 2-core CI


@pytest.fixture(name="browser")
async def browser_fixture() -> AsyncIterator[Browser]:
    """Headless Debian Chromium through Playwright."""
    async with chromium() as browser:
        yield browser


async def routed(make_gateway: GatewayFactory, sim: Simulator, **overrides: Any) -> Client:
    """A gateway with routes a and b through the simulator, fast probes and a fast page."""
    routes = json.dumps([{"name": n, "url": sim.route_url(n)} for n in ("a", "b")])
    return await make_gateway(upstreams=routes, **{**FAST, **overrides})


async def open_page(browser: Browser, gateway: Client, watch: PageWatch, **context: Any) -> Page:
    """The status page in a fresh browser context, watched for complaints."""
    page = watch.attach(await (await browser.new_context(**context)).new_page())
    response = await page.goto(str(gateway.make_url("/")))
    assert response is not None
    assert response.status == 200
    return page


async def route_class(page: Page, name: str) -> str | None:
    """The row class the page shows for route ``name`` now."""
    return await page.get_attribute(f'tr[data-route="{name}"]', "class")


async def test_a_broken_route_shows_down_and_healed_up(
    browser: Browser, make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Routes broken through the simulator turn down (then all down) within a refresh; healed, up; no complaints."""
    gateway = await routed(make_gateway, sim)
    routes = gateway.app[ROUTES]
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    assert await page.text_content("#state") == "Serving"

    sim.set_faults(BLOCKED, route="b")
    await eventually(lambda: not routes["b"].flag.working, within=5)
    noticed = time.monotonic()
    await page.wait_for_selector('tr[data-route="b"].down', timeout=SEEN_WITHIN_MS)
    assert time.monotonic() - noticed < SEEN_WITHIN_MS / 1000
    assert await page.text_content("#state") == "Degraded"
    assert await page.text_content('tr[data-route="b"] [data-cell="status"]') == "down"
    assert "failed" in (await page.text_content('tr[data-route="b"] [data-cell="probe"]') or "")
    assert await route_class(page, "a") == "route up"

    sim.set_faults(BLOCKED, route="a")
    await page.wait_for_selector("#state.state-down", timeout=SEEN_WITHIN_MS + 5000)
    assert await page.text_content("#state") == "Down"

    sim.set_faults(SimFaults(), route="a")
    sim.set_faults(SimFaults(), route="b")
    await page.wait_for_selector('tr[data-route="a"].up', timeout=SEEN_WITHIN_MS + 5000)
    await page.wait_for_selector('tr[data-route="b"].up', timeout=SEEN_WITHIN_MS + 5000)
    await page.wait_for_selector("#state.state-serving", timeout=SEEN_WITHIN_MS)
    assert await page.is_hidden("#stale")
    assert watch.complaints() == []


async def test_no_secret_anywhere_in_the_dom(browser: Browser, make_gateway: GatewayFactory, sim: Simulator) -> None:
    """After refreshes, neither the DOM nor the page's text holds a token, key, password or the probe prompt."""
    secrets = ("route-token-Kx93", "proxy-pass-Pw27", "api-key-Ak55", "admin-token-Zq81", "probe-prompt-Pp11")
    routes = [
        {"name": "a", "url": sim.route_url("a") + "?key=route-token-Kx93", "token": "route-token-Kx93"},
        {"name": "b", "url": sim.route_url("b"), "proxy": "http://user:proxy-pass-Pw27@127.0.0.1:9"},
    ]
    gateway = await make_gateway(
        upstreams=json.dumps(routes),
        api_keys="api-key-Ak55",
        admin_token="admin-token-Zq81",
        **{**FAST, "probe_prompt": "probe-prompt-Pp11"},
    )
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    for _ in range(2):  # the DOM after the script has copied fresh data in, twice
        async with page.expect_response(lambda r: r.url.endswith("/ui/data")) as response:
            pass
        assert (await response.value).status == 200
    dom = await page.evaluate("document.documentElement.outerHTML")
    text = await page.evaluate("document.body.innerText")
    for secret in secrets:
        assert secret not in dom
        assert secret not in text
    assert watch.complaints() == []


async def test_a_stopped_gateway_leaves_a_stale_page(
    browser: Browser, make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """When the gateway stops answering, the banner and the header badge say "Stale" instead of old data as current."""
    gateway = await routed(make_gateway, sim)
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    await gateway.close()
    await page.wait_for_selector("#stale:not([hidden])", timeout=SEEN_WITHIN_MS)
    assert (await page.text_content("#stale") or "").startswith("Stale: the gateway did not answer")
    # The header badge no longer claims the last known state: grey "Stale", like the banner.
    assert await page.text_content("#state") == "Stale"
    assert await page.get_attribute("#state", "class") == "state state-stale"
    assert "is-stale" in (await page.get_attribute("body", "class") or "")
    assert watch.failed  # the refreshes that found no gateway
    assert all("ui/data" in failure for failure in watch.failed)


async def test_a_page_with_other_routes_reloads(browser: Browser, make_gateway: GatewayFactory, sim: Simulator) -> None:
    """When the data names routes the page has no row for (a restart with new routes), the page reloads itself."""
    gateway = await routed(make_gateway, sim)
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    await page.evaluate("document.querySelector('tr[data-route=\"b\"]').remove()")
    async with page.expect_navigation(timeout=SEEN_WITHIN_MS):
        pass
    assert await page.locator("tr[data-route]").count() == 2
    assert watch.complaints() == []


async def test_admin_mode_works_with_the_browsers_basic_login(
    browser: Browser, make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """GATEWAY_UI=admin: without credentials 401; with the Basic password the page loads and keeps refreshing."""
    gateway = await routed(make_gateway, sim, ui="admin", admin_token="admin-token-Zq81")
    assert (await gateway.get("/")).status == 401  # a browser without the password gets the challenge
    watch = PageWatch()
    credentials = {"username": "operator", "password": "admin-token-Zq81"}
    page = await open_page(browser, gateway, watch, http_credentials=credentials)
    async with page.expect_response(lambda r: r.url.endswith("/ui/data")) as refreshed:
        pass
    assert (await refreshed.value).status == 200
    assert await page.is_hidden("#stale")
    assert watch.complaints() == []


async def test_phone_width_has_no_sideways_scroll(
    browser: Browser, make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """At 390 px wide the routes stack as cards and nothing overflows sideways."""
    gateway = await routed(make_gateway, sim)
    watch = PageWatch()
    page = await open_page(browser, gateway, watch, viewport={"width": 390, "height": 844})
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert await page.is_hidden("thead")
    assert watch.complaints() == []


async def test_sixty_four_routes_render_and_refresh(
    browser: Browser, make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """With the most routes allowed the page shows every one and keeps refreshing without complaints."""
    names = [f"route-{index:02d}" for index in range(64)]
    upstreams = json.dumps([{"name": name, "url": sim.route_url("a")} for name in names])
    gateway = await make_gateway(upstreams=upstreams, ui_refresh_seconds=REFRESH, ui_sample_seconds=0.05)
    gateway.app[ROUTES]["route-63"].flag.set_mode("not_working")
    watch = PageWatch()
    page = await open_page(browser, gateway, watch)
    for _ in range(2):
        async with page.expect_response(lambda r: r.url.endswith("/ui/data")) as refreshed:
            pass
        assert (await refreshed.value).status == 200
    assert await page.locator("tr[data-route]").count() == 64
    assert await route_class(page, "route-63") == "route down"
    assert await page.text_content("#state") == "Degraded"
    assert watch.complaints() == []
