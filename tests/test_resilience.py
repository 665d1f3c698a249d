"""Breaker, retries, budget, concurrency limit, timeouts and disconnects, through the real simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app_keys import ROUTES, UPSTREAM
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import eventually
from tests.clock_support import FakeClock
from tests.gateway_support import GatewayFactory, chat_body, sse_events
from tests.metrics_support import delta, scrape, value

Client = TestClient[web.Request, web.Application]
P = {"provider": "flowgpt"}
R = {**P, "route": "default"}  # the labels of an upstream series of the default route
CHAT = "/v1/chat/completions"


async def _trip(gateway: Client, times: int) -> None:
    for _ in range(times):
        response = await gateway.post(CHAT, json=chat_body())
        assert response.status == 502


async def test_failures_open_the_breaker_and_refusals_skip_the_upstream(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """fail_max failures open it; the next request is refused with 503 circuit_open and never reaches the simulator."""
    clock = FakeClock()
    gateway = await make_gateway(breaker_fail_max=3, retry_max=0, clock=clock)
    sim.faults = SimFaults(http_status=503)
    before = await scrape(gateway)
    await _trip(gateway, 3)
    seen = sim.stats.requests_total
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert (await response.json())["error"]["code"] == "circuit_open"
    assert sim.stats.requests_total == seen
    clock.advance(12.2)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.headers["Retry-After"] == "18"  # from the injected monotonic clock, rounded up
    after = await scrape(gateway)
    assert delta(before, after, "gateway_admission_rejections_total", reason="breaker_open", **P) == 2
    assert delta(before, after, "gateway_breaker_transitions_total", to_state="open", source="local", **R) == 1
    assert value(after, "gateway_breaker_state", state="open", **R) == 1
    assert value(after, "gateway_breaker_state", state="closed", **R) == 0


async def test_half_open_lets_exactly_one_trial_through(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """After the open period one trial reaches the upstream while concurrent callers get half_open_busy."""
    clock = FakeClock()
    gateway = await make_gateway(breaker_fail_max=1, retry_max=0, clock=clock)
    sim.faults = SimFaults(http_status=503)
    await _trip(gateway, 1)
    clock.advance(30)
    sim.faults = SimFaults(slow_first_token=0.3)  # healthy but slow, so the trial is still in flight
    seen = sim.stats.requests_total
    responses = await asyncio.gather(*(gateway.post(CHAT, json=chat_body()) for _ in range(5)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 503, 503, 503, 503]
    codes = {(await r.json())["error"]["code"] for r in responses if r.status == 503}
    assert codes == {"half_open_busy"}
    assert sim.stats.requests_total == seen + 1
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"  # the trial's success closed it


async def test_failed_trial_reopens_with_a_longer_wait(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A failing trial re-opens the breaker; with a multiplier the next open period is longer."""
    clock = FakeClock()
    gateway = await make_gateway(breaker_fail_max=1, breaker_reset_multiplier=2, retry_max=0, clock=clock)
    sim.faults = SimFaults(http_status=500)
    await _trip(gateway, 1)
    clock.advance(30)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502  # the trial fails
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 503
    assert response.headers["Retry-After"] == "60"


async def test_mid_stream_breaks_trip_the_breaker(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Streams that open fine and then break count as failures when they break."""
    gateway = await make_gateway(breaker_fail_max=2, retry_max=0)
    sim.faults = SimFaults(reset_after=2)
    for _ in range(2):
        response = await gateway.post(CHAT, json=chat_body("a fairly long question", stream=True))
        assert json.loads(sse_events(await response.text())[-1])["error"]["code"] == "upstream_interrupted"
    assert gateway.app[ROUTES]["default"].breaker.state == "open"


async def test_gateway_rejections_never_count(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Validation errors, unknown models and auth failures leave the breaker untouched."""
    gateway = await make_gateway(breaker_fail_max=1, api_keys="k")
    headers = {"Authorization": "Bearer k"}
    assert (await gateway.post(CHAT, data=b"{", headers=headers)).status == 400
    assert (await gateway.post(CHAT, json=chat_body(model="nope"), headers=headers)).status == 404
    assert (await gateway.post(CHAT, json=chat_body())).status == 401
    breaker = gateway.app[ROUTES]["default"].breaker
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 0)
    assert sim.stats.requests_total == 0


async def test_streaming_client_disconnect_cancels_upstream(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A client that leaves mid-stream closes the upstream connection at once; nothing counts as a failure."""
    gateway = await make_gateway(breaker_fail_max=1)
    sim.faults = SimFaults(stall_after=1)
    before = await scrape(gateway)
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway.make_url(CHAT), json=chat_body(stream=True))
        await response.content.readline()  # the stream started
        response.close()  # the client goes away
    await eventually(lambda: sim.stats.client_disconnects == 1)
    await eventually(lambda: gateway.app[ROUTES]["default"].inflight == 0)
    after = await scrape(gateway)
    assert (
        sum(delta(before, after, "gateway_upstream_errors_total", kind=k, **R) for k in ("timeout", "interrupted")) == 0
    )
    assert gateway.app[ROUTES]["default"].breaker.consecutive_failures == 0
    assert gateway.app[UPSTREAM].limiter.in_use == 0


async def test_non_streaming_client_disconnect_cancels_upstream(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A client that gives up while waiting for the first token cancels the upstream call."""
    gateway = await make_gateway(breaker_fail_max=1, timeout_first_token=10)
    sim.faults = SimFaults(slow_first_token=5)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        with contextlib.suppress(TimeoutError):
            await session.post(gateway.make_url(CHAT), json=chat_body())
    await eventually(lambda: sim.stats.client_disconnects == 1)
    await eventually(lambda: gateway.app[UPSTREAM].limiter.in_use == 0)
    assert gateway.app[ROUTES]["default"].breaker.consecutive_failures == 0


async def test_one_failure_is_retried_transparently(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """An upstream that fails once succeeds for the client, with one retry counted."""
    gateway = await make_gateway(retry_max=2)
    sim.faults = SimFaults(http_status=503, count=1)
    before = await scrape(gateway)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 200
    after = await scrape(gateway)
    assert delta(before, after, "gateway_upstream_retries_total", **R) == 1
    assert delta(before, after, "gateway_upstream_requests_total", **R) == 2
    assert sim.stats.requests_total == 2


async def test_connect_errors_and_first_token_timeouts_are_retried(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """A slow first token is retried and the second attempt answers."""
    gateway = await make_gateway(retry_max=1, timeout_first_token=0.2)
    sim.faults = SimFaults(slow_first_token=1.0, count=1)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 200
    assert sim.stats.requests_total == 2


async def test_no_retry_after_the_first_byte(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A stream that broke after text was sent is never retried."""
    gateway = await make_gateway(retry_max=2)
    sim.faults = SimFaults(reset_after=2)
    response = await gateway.post(CHAT, json=chat_body("a fairly long question", stream=True))
    assert "[DONE]" not in sse_events(await response.text())
    assert sim.stats.requests_total == 1


async def test_non_retryable_errors_are_not_retried(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Auth failures, Cloudflare blocks and 429s whose Retry-After exceeds the deadline go straight back."""
    gateway = await make_gateway(retry_max=2, timeout_total=5)
    for faults, status in (
        (SimFaults(http_status=401), 502),
        (SimFaults(http_status=403, http_body="cloudflare"), 502),
        (SimFaults(http_status=429, retry_after=60), 429),
    ):
        sim.faults = faults
        before = sim.stats.requests_total
        response = await gateway.post(CHAT, json=chat_body())
        assert response.status == status
        assert sim.stats.requests_total == before + 1
    assert response.headers["Retry-After"] == "60"


async def test_retry_budget_caps_retries_in_an_outage(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Under a full outage retries stay within the budget instead of tripling the load."""
    clock = FakeClock()
    gateway = await make_gateway(
        retry_max=2, retry_budget_ratio=0.1, retry_budget_min=2, breaker_fail_max=1000, clock=clock
    )
    sim.faults = SimFaults(http_status=503)
    for _ in range(20):
        assert (await gateway.post(CHAT, json=chat_body())).status == 502
    retries = (await scrape(gateway))[("gateway_upstream_retries_total", frozenset(R.items()))]
    assert retries == 2  # max(minimum 2, 10% of 20 requests); without a budget it would be 40
    assert sim.stats.requests_total == 22


async def test_no_retry_once_the_breaker_opened(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """The failure that opens the breaker is not retried."""
    gateway = await make_gateway(retry_max=2, breaker_fail_max=1)
    sim.faults = SimFaults(http_status=503)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    assert sim.stats.requests_total == 1


async def test_concurrency_limit_answers_429(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Beyond the limit and a short queue wait, callers get 429 gateway_overloaded with Retry-After."""
    gateway = await make_gateway(max_concurrency=2, queue_timeout=0.05)
    sim.faults = SimFaults(slow_first_token=0.4)
    before = await scrape(gateway)
    responses = await asyncio.gather(*(gateway.post(CHAT, json=chat_body()) for _ in range(4)))
    assert sorted(r.status for r in responses) == [200, 200, 429, 429]
    refused = [r for r in responses if r.status == 429]
    assert {(await r.json())["error"]["code"] for r in refused} == {"gateway_overloaded"}
    assert {r.headers["Retry-After"] for r in refused} == {"1"}
    after = await scrape(gateway)
    assert delta(before, after, "gateway_admission_rejections_total", reason="overloaded", **P) == 2
    assert sim.stats.requests_total == 2


async def test_total_deadline_ends_a_stream_with_an_error_event(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """The total timeout ends a stream that is still going with an upstream_timeout event."""
    gateway = await make_gateway(timeout_idle=5, timeout_total=0.5)
    sim.faults = SimFaults(stall_after=2)
    response = await gateway.post(CHAT, json=chat_body("a fairly long question", stream=True))
    error = json.loads(sse_events(await response.text())[-1])["error"]
    assert error["code"] == "upstream_timeout"
    assert "total" in error["message"]


async def test_admin_can_force_the_breaker(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Operators force the breaker open or closed and hand it back; refusals never reach the upstream."""
    gateway = await make_gateway(admin_token="adm1n", breaker_fail_max=1, retry_max=0)
    auth = {"Authorization": "Bearer adm1n"}
    response = await gateway.post("/admin/breaker", json={"mode": "open"}, headers=auth)
    assert response.status == 200
    assert (await response.json())["routes"][0]["breaker"]["mode"] == "forced_open"
    refused = await gateway.post(CHAT, json=chat_body())
    assert (refused.status, (await refused.json())["error"]["code"]) == (503, "circuit_open")
    assert sim.stats.requests_total == 0
    await gateway.post("/admin/breaker", json={"mode": "closed"}, headers=auth)
    sim.faults = SimFaults(http_status=500)
    for _ in range(3):
        assert (await gateway.post(CHAT, json=chat_body())).status == 502
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"  # forced closed never trips
    await gateway.post("/admin/breaker", json={"mode": "auto"}, headers=auth)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    assert gateway.app[ROUTES]["default"].breaker.state == "open"
    bad = await gateway.post("/admin/breaker", json={"mode": "sideways"}, headers=auth)
    assert (bad.status, (await bad.json())["error"]["param"]) == (400, "mode")


async def test_outage_refusal_comes_before_body_validation(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """While the breaker is open even a malformed body gets 503 circuit_open: nothing is parsed."""
    gateway = await make_gateway(breaker_fail_max=1, retry_max=0)
    sim.faults = SimFaults(http_status=500)
    await _trip(gateway, 1)
    response = await gateway.post(CHAT, data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "circuit_open"


async def test_disconnects_are_counted_as_499_not_500(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A client that goes away is recorded as 499 (client closed request), never as a server error."""
    gateway = await make_gateway()
    sim.faults = SimFaults(stall_after=1)
    before = await scrape(gateway)
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway.make_url(CHAT), json=chat_body(stream=True))
        await response.content.readline()
        response.close()
    await eventually(lambda: gateway.app[UPSTREAM].limiter.in_use == 0)
    after = await scrape(gateway)
    route = {"route": CHAT, "method": "POST"}
    assert delta(before, after, "gateway_http_requests_total", code="499", **route) == 1
    assert ("gateway_http_requests_total", frozenset({**route, "code": "500"}.items())) not in after


async def test_no_retry_without_room_left_in_the_deadline(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A first-token timeout is not retried when too little of the total deadline is left to succeed."""
    gateway = await make_gateway(retry_max=2, timeout_first_token=0.6, timeout_total=1.0)
    sim.faults = SimFaults(slow_first_token=5)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 504
    assert sim.stats.requests_total == 1
