"""The status page over HTTP: content, state words, security headers, escaping, secrets, GATEWAY_UI modes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from gateway.app_keys import ROUTES
from gateway.events import ProbeResult
from gateway.redact import Scrubber
from gateway.settings import Settings, describe_validation_error
from gateway.simulator import SimFaults, Simulator
from gateway.status_page.render import render_page
from gateway.status_page.view import VIEW_WIDTH, page_view, seconds, spark_path
from tests.gateway_support import GatewayFactory, chat_body

Client = TestClient[web.Request, web.Application]
ADMIN = "admin-token-Zq81"
SECRETS = ("route-token-Kx93", "proxy-pass-Pw27", "api-key-Ak55", ADMIN, "probe-prompt-Pp11")


def two_routes(sim: Simulator) -> str:
    """GATEWAY_UPSTREAMS with routes a and b of the simulator."""
    return json.dumps([{"name": n, "url": sim.route_url(n)} for n in ("a", "b")])


async def page_and_data(gateway: Client, **headers: str) -> tuple[str, dict[str, Any]]:
    """The page's HTML and its JSON data, both expected to be 200."""
    page = await gateway.get("/", headers=headers)
    data = await gateway.get("/ui/data", headers=headers)
    assert (page.status, data.status) == (200, 200)
    return await page.text(), await data.json()


def csp_hash(text: str) -> str:
    """The CSP source expression for an inline element's text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_the_page_is_html_under_a_strict_policy(gateway: Client) -> None:
    """/ and /ui serve the page; the CSP allows exactly its inline style and script, nothing inline by default."""
    for path in ("/", "/ui"):
        response = await gateway.get(path)
        assert response.status == 200
        assert response.content_type == "text/html"
        html = await response.text()
        policy = response.headers["Content-Security-Policy"]
        style = re.search(r"<style>(.*?)</style>", html, re.S)
        script = re.search(r"<script>(.*?)</script>", html, re.S)
        assert style is not None
        assert script is not None
        assert f"style-src {csp_hash(style.group(1))};" in policy
        assert f"script-src {csp_hash(script.group(1))};" in policy
        assert "default-src 'none'" in policy
        assert "unsafe" not in policy
        assert "frame-ancestors 'none'" in policy
        assert "connect-src 'self'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no external asset
        assert html.count("<script") == 1
        assert " style=" not in html


async def test_the_data_says_serving_degraded_and_down(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Overall state: serving with every route up, degraded with one down, down with none; rows follow."""
    gateway = await make_gateway(upstreams=two_routes(sim))
    routes = gateway.app[ROUTES]
    html, data = await page_and_data(gateway)
    assert data["state"] == "serving"
    assert 'class="state state-serving">Serving<' in html
    routes["b"].flag.set_mode("not_working")
    html, data = await page_and_data(gateway)
    assert data["state"] == "degraded"
    assert [(r["name"], r["up"]) for r in data["routes"]] == [("a", True), ("b", False)]
    assert data["view"]["routes"][1]["cells"]["working"] == "off, pinned by an operator"
    assert '<tr class="route down" data-route="b">' in html
    routes["a"].breaker.force_open()
    _, data = await page_and_data(gateway)
    assert data["state"] == "down"
    assert data["view"]["state_text"] == "Down"
    # A forced breaker has no countdown: it stays open until released (it used to show a frozen "30 s left").
    assert data["view"]["routes"][0]["cells"]["breaker"] == "open (forced until an operator releases it)"


async def test_an_open_breaker_shows_its_time_left(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A breaker opened by failures shows as open with the seconds left before a trial."""
    gateway = await make_gateway(breaker_fail_max=1, retry_max=0, breaker_reset_seconds=30)
    sim.set_faults(SimFaults(http_status=503))
    assert (await gateway.post("/v1/chat/completions", json=chat_body())).status == 502
    _, data = await page_and_data(gateway)
    route = data["routes"][0]
    assert route["breaker"]["state"] == "open"
    assert 29 <= route["breaker"]["retry_after"] <= 30
    assert re.fullmatch(r"open, (29|30) s left", data["view"]["routes"][0]["cells"]["breaker"])


async def test_traffic_and_probes_reach_the_page(make_gateway: GatewayFactory) -> None:
    """Requests in the window, first-token quantiles and the last probe are on the page."""
    gateway = await make_gateway(ui_sample_seconds=0.05)
    for _ in range(3):
        assert (await gateway.post("/v1/chat/completions", json=chat_body())).status == 200
    route = gateway.app[ROUTES]["default"]
    await route.prober.probe_once()
    _, data = await page_and_data(gateway)
    row = data["routes"][0]
    assert row["requests"] == 3
    assert row["failures"] == 0
    assert row["first_token_p50"] is not None
    assert row["first_token_p95"] >= row["first_token_p50"]
    assert row["probe"]["ok"] is True
    assert row["probe"]["age"] < 5
    assert data["view"]["routes"][0]["cells"]["probe"].startswith("ok, ")


async def test_dynamic_text_is_escaped(gateway: Client) -> None:
    """Markup in a probe error reaches the page as text, never as elements."""
    route = gateway.app[ROUTES]["default"]
    route.flag.record(ProbeResult(ok=False, at=time.time(), latency=0.1, error='<script>alert("x")</script><b>'))
    html, data = await page_and_data(gateway)
    assert "<script>alert" not in html
    assert "<b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;b&gt;" in html
    assert data["routes"][0]["probe"]["error"].startswith("<script>")  # JSON carries it as data, the page as text


def test_rendering_escapes_names_and_urls_even_past_validation() -> None:
    """Were a hostile route name or URL to get past settings validation, the HTML still holds it as text."""
    hostile = 'x"><script>alert(1)</script>'
    empty: dict[str, Sequence[float | None]] = {"requests": [], "failures": [], "first_token": []}
    route = {
        "name": hostile,
        "url": "http://h/" + hostile,
        "up": False,
        "working": False,
        "working_mode": "auto",
        "working_state": "not_working",
        "since_change": 3.0,
        "breaker": {"state": "closed", "mode": "auto", "retry_after": None},
        "probe": {"ok": False, "latency": 0.1, "age": 1.0, "error": hostile},
        "requests": 1.0,
        "failures": 1.0,
        "failovers": 0.0,
        "client_errors": 0.0,
        "flaps": 1.0,
        "downtime": 3.0,
        "first_token_p50": None,
        "first_token_p95": None,
    }
    data = {
        "state": "down",
        "draining": False,
        "version": hostile,
        "uptime": 1.0,
        "step": 5.0,
        "window": 0.0,
        "inflight": 0,
        "limit": 1,
        "rejections": dict.fromkeys(("breaker_open", "half_open_busy", "not_working", "overloaded"), 0.0),
        "retries": 0.0,
        "failovers": 0.0,
        "received": dict.fromkeys(("2xx", "4xx", "5xx", "stream_errors"), 0.0),
        "generated_at": 10.0,
        "events": [{"at": 1.0, "route": hostile, "kind": "probe", "old": "passing", "new": "failing", "reason": hostile}],
        "routes": [route],
    }
    html = render_page(page_view(data, {hostile: empty}), source='ui/data"><script>', refresh=1)
    assert "<script>alert" not in html
    assert html.count("<script") == 1
    assert 'data-route="x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html


async def test_no_secret_or_prompt_is_shown(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Route tokens, proxy credentials, URL query values, API keys, the admin token and the probe prompt stay out."""
    routes = [
        {"name": "a", "url": sim.route_url("a") + "?key=route-token-Kx93", "token": "route-token-Kx93"},
        {"name": "b", "url": sim.route_url("b"), "proxy": "http://user:proxy-pass-Pw27@127.0.0.1:9"},
    ]
    gateway = await make_gateway(
        upstreams=json.dumps(routes), api_keys="api-key-Ak55", admin_token=ADMIN, probe_prompt="probe-prompt-Pp11"
    )
    html, data = await page_and_data(gateway)
    for secret in SECRETS:
        assert secret not in html
        assert secret not in json.dumps(data)
    assert "key=***" in html
    assert "***@127.0.0.1" not in html


async def test_secrets_an_upstream_quotes_are_scrubbed(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A probe error quoting a route token, a proxy password or the probe prompt shows them as ***."""
    routes = [
        {"name": "a", "url": sim.route_url("a"), "token": "route-token-Kx93"},
        {"name": "b", "url": sim.route_url("b"), "proxy": "http://user:proxy-pass-Pw27@127.0.0.1:9"},
    ]
    gateway = await make_gateway(upstreams=json.dumps(routes), probe_prompt="probe-prompt-Pp11")
    quoted = "HTTP 401: token route-token-Kx93 revoked; prompt probe-prompt-Pp11 via proxy-pass-Pw27"
    for route in gateway.app[ROUTES]:
        route.flag.record(ProbeResult(ok=False, at=time.time(), latency=0.1, error=quoted))
    html, data = await page_and_data(gateway)
    assert data["routes"][0]["probe"]["error"] == "HTTP 401: token *** revoked; prompt *** via ***"
    for secret in SECRETS:
        assert secret not in html
        assert secret not in json.dumps(data)


def test_a_secret_cut_short_at_the_end_is_masked() -> None:
    """A message cut inside a quoted token loses the token's first characters too, not just whole tokens."""
    scrub = Scrubber(["route-token-Kx93", "probe-prompt-Pp11"])
    assert scrub("bad token route-token-Kx93 and route-tok") == "bad token *** and ***"
    assert scrub("ping rou") == "ping rou"  # under four characters: ordinary text


async def test_ui_off_is_an_unknown_route(make_gateway: GatewayFactory) -> None:
    """GATEWAY_UI=off: /, /ui and /ui/data answer 404 JSON like any unknown path."""
    gateway = await make_gateway(ui="off")
    for path in ("/", "/ui", "/ui/data"):
        response = await gateway.get(path)
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


async def test_ui_admin_needs_the_token(make_gateway: GatewayFactory) -> None:
    """GATEWAY_UI=admin: without the token 401 with a Basic challenge; the Basic password or bearer token opens both."""
    gateway = await make_gateway(ui="admin", admin_token=ADMIN)
    basic = "Basic " + base64.b64encode(f"anyone:{ADMIN}".encode()).decode()
    wrong = "Basic " + base64.b64encode(b"anyone:guess").decode()
    for path in ("/", "/ui", "/ui/data"):
        for header in ({}, {"Authorization": wrong}, {"Authorization": "Basic %%%"}, {"Authorization": "Bearer x"}):
            response = await gateway.get(path, headers=header)
            assert response.status == 401, (path, header)
            assert response.headers["WWW-Authenticate"].startswith('Basic realm="flowgpt-gateway status"')
            assert ADMIN not in await response.text()
        for good in (basic, f"Bearer {ADMIN}"):
            assert (await gateway.get(path, headers={"Authorization": good})).status == 200


def test_ui_admin_without_a_token_is_refused() -> None:
    """GATEWAY_UI=admin with no GATEWAY_ADMIN_TOKEN fails validation with one line naming both."""
    with pytest.raises(ValidationError) as caught:
        Settings(ui="admin")
    line = describe_validation_error(caught.value)
    assert "\n" not in line
    assert "GATEWAY_UI=admin needs GATEWAY_ADMIN_TOKEN" in line


def test_durations_read_like_a_person_wrote_them() -> None:
    """Durations: ms under a second, seconds, minutes, hours; a dash when unknown."""
    assert [seconds(v) for v in (None, 0.0123, 2.55, 42, 900, 7200)] == [
        "–",
        "12 ms",
        "2.5 s",
        "42 s",
        "15 min",
        "2.0 h",
    ]


def test_sparkline_paths_break_at_gaps() -> None:
    """A step without data lifts the pen; the newest point is at the right edge, the peak at the top."""
    path, peak = spark_path([1.0, None, 2.0, 0.0])
    assert peak == 2.0
    right = VIEW_WIDTH
    assert path == f"M{right - 6} 20 M{right - 2} 1 {right} 39"


async def test_headers_state_the_window_the_rings_really_hold(make_gateway: GatewayFactory) -> None:
    """At a 0.25 s sample step the rings hold 45 s, and the headers say 45 s, not 5 minutes."""
    short = await make_gateway(ui_sample_seconds=0.25)
    html, _ = await page_and_data(short)
    assert "Requests, 45\u00a0s" in html
    assert "5 min" not in html
    default = await make_gateway()
    html, _ = await page_and_data(default)
    assert "Requests, 5\u00a0min" in html


async def test_with_workers_the_page_names_the_worker_that_answered(gateway: Client) -> None:
    """Under serve --workers each worker shows its own counts, and the page says whose."""
    _, data = await page_and_data(gateway)
    assert data["pid"] == os.getpid()
    assert "worker" not in data["view"]["meta"]  # one process: nothing to say
    empty: dict[str, Sequence[float | None]] = {"requests": [], "failures": [], "first_token": []}
    view = page_view({**data, "workers": 2}, {r["name"]: empty for r in data["routes"]})
    assert f"worker pid {os.getpid()} of 2" in view["meta"]


async def test_a_storm_of_data_requests_builds_the_data_about_once_a_second(gateway: Client) -> None:
    """Fifty /ui/data requests in a burst get one build (the same generated_at); a state change shows at once."""
    stamps = set()
    started = time.monotonic()
    for _ in range(50):
        response = await gateway.get("/ui/data")
        stamps.add((await response.json())["generated_at"])
    assert len(stamps) <= 1 + int(time.monotonic() - started)  # at most one build per second
    gateway.app[ROUTES]["default"].flag.set_mode("not_working")
    _, data = await page_and_data(gateway)
    assert data["state"] == "down"
    assert data["generated_at"] not in stamps


async def test_an_open_page_next_to_closed_api_keys_is_warned_about(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """GATEWAY_API_KEYS set and GATEWAY_UI=on: one start-up warning names both ways to close the page."""
    await make_gateway(api_keys="k-123456")
    warnings = [r.message for r in caplog.records if r.name == "gateway.handlers.ui"]
    assert len(warnings) == 1
    assert "GATEWAY_UI=admin" in warnings[0]
    assert "GATEWAY_UI=off" in warnings[0]
    caplog.clear()
    await make_gateway(api_keys="k-123456", ui="off")
    assert not [r for r in caplog.records if r.name == "gateway.handlers.ui"]
