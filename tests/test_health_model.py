"""The health model's promises, through the simulator: one regression test per way a review made it lie.

Each test failed on the gateway before the health-model change (see the README's
"The health model" section for the model these tests check).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from gateway.app_keys import INFLIGHT, ROUTES, UPSTREAM
from gateway.errors import UPSTREAM_ERROR_KINDS
from gateway.redact import mask_url
from gateway.settings import Settings
from gateway.simulator import SimFaults, SimOptions, Simulator
from gateway.status_page.sampler import read_route
from monitoring.processes import eventually
from tests.gateway_support import GatewayFactory, chat_body
from tests.metrics_support import delta, scrape, value

GatewayClient = TestClient[web.Request, web.Application]
P = {"provider": "flowgpt"}
R = {**P, "route": "default"}  # the labels of an upstream series of the default route
CHAT = "/v1/chat/completions"


async def test_requests_the_upstream_rejects_never_open_the_breaker(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Item 1: oversized or invalid requests get the upstream's 4xx and leave the breaker closed for everyone."""
    gateway = await make_gateway(breaker_fail_max=2, retry_max=0)
    sim.faults = SimFaults(reject_over_bytes=100_000, reject_marker="POISON", reject_status=422)
    before = await scrape(gateway)
    huge_system = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "system", "content": "x" * 60_000}, {"role": "user", "content": "y" * 60_000}],
    }
    for _ in range(5):
        response = await gateway.post(CHAT, json=huge_system)  # 120,000 characters upstream: system and question
        assert response.status == 413
        error = (await response.json())["error"]
        assert error["code"] == "upstream_rejected_request"
        assert "too large" in error["message"]
        response = await gateway.post(CHAT, json=chat_body("POISON"))
        assert response.status == 422
        assert (await response.json())["error"]["code"] == "upstream_rejected_request"
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"
    assert gateway.app[ROUTES]["default"].breaker.consecutive_failures == 0
    response = await gateway.post(CHAT, json=chat_body("an ordinary question"))
    assert response.status == 200
    after = await scrape(gateway)
    assert delta(before, after, "gateway_upstream_errors_total", kind="rejected", **R) == 10
    assert delta(before, after, "gateway_upstream_retries_total", **R) == 0
    for kind in UPSTREAM_ERROR_KINDS:
        if kind != "rejected":
            assert delta(before, after, "gateway_upstream_errors_total", kind=kind, **R) == 0, kind


async def test_a_successful_probe_lets_traffic_through_an_open_breaker(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Item 2: after a trip the immediate probe succeeds, so the next request is served, not refused for 300 s."""
    gateway = await make_gateway(
        probe_enabled=True, probe_interval=60, breaker_fail_max=1, breaker_reset_seconds=300, retry_max=0
    )
    await eventually(lambda: gateway.app[ROUTES]["default"].flag.probes_total >= 1)  # the start-up probe
    sim.faults = SimFaults(http_status=500, count=1)  # exactly the live request fails
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    await eventually(lambda: gateway.app[ROUTES]["default"].flag.probes_total >= 2, within=3.0)  # the probe the trip triggered
    last_probe = gateway.app[ROUTES]["default"].flag.last_probe
    assert last_probe is not None
    assert last_probe.ok
    assert gateway.app[ROUTES]["default"].breaker.state == "half_open"
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 200, await response.text()
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"


async def test_the_probe_is_held_to_the_live_first_token_limit(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Item 3: the probe's limit defaults to the first-token limit, a stricter one is refused, a slow upstream passes."""
    assert Settings(timeout_first_token=30).probe_deadline == 30
    with pytest.raises(ValueError, match="GATEWAY_PROBE_TIMEOUT must be >= GATEWAY_TIMEOUT_FIRST_TOKEN"):
        Settings(timeout_first_token=30, probe_timeout=10)
    gateway = await make_gateway(timeout_first_token=1.5, timeout_total=5)
    sim.faults = SimFaults(slow_first_token=1.0)
    result = await gateway.app[ROUTES]["default"].prober.probe_once()
    assert result.ok, result.error
    assert (await gateway.post(CHAT, json=chat_body())).status == 200


async def _stalled_request(port: int, *, stream: bool) -> asyncio.StreamWriter:
    """A chat request from a client that never reads, with a tiny receive buffer so it backs up fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps(chat_body("long", stream=stream)).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    await writer.drain()
    return writer


async def test_a_client_that_stops_reading_is_cut_and_frees_its_slot(
    make_gateway: GatewayFactory, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 4: a stalled stream reader is cut after the client write timeout: slot freed, 499, no upstream blame."""
    gateway = await make_gateway(max_concurrency=1, queue_timeout=0, timeout_client_write=0.5, timeout_total=30)
    sim.faults = SimFaults(answer_bytes=32 * 1024 * 1024)
    before = await scrape(gateway)
    port = gateway.server.port
    assert port is not None
    writer = await _stalled_request(port, stream=True)
    try:
        limiter = gateway.app[UPSTREAM].limiter
        await eventually(lambda: limiter.in_use == 1, within=2.0)
        await eventually(lambda: limiter.in_use == 0, within=5.0)  # cut: about 0.5 s after the buffers filled
        sim.faults = SimFaults()
        assert (await gateway.post(CHAT, json=chat_body())).status == 200  # the one slot serves others again
    finally:
        writer.close()
    after = await scrape(gateway)
    assert delta(before, after, "gateway_http_requests_total", route=CHAT, method="POST", code="499") == 1
    assert gateway.app[ROUTES]["default"].breaker.consecutive_failures == 0
    for kind in UPSTREAM_ERROR_KINDS:
        assert delta(before, after, "gateway_upstream_errors_total", kind=kind, **R) == 0, kind
    await eventually(lambda: sim.stats.active_streams == 0, within=2.0)  # the upstream connection went too
    assert any("client stopped reading" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


async def test_the_breaker_gauge_leaves_open_on_time_without_traffic(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Item 5: when the open period ends the state gauge says half_open, with no request in between."""
    gateway = await make_gateway(breaker_fail_max=1, breaker_reset_seconds=0.3, retry_max=0)
    sim.faults = SimFaults(http_status=500)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    samples = await scrape(gateway)
    assert value(samples, "gateway_breaker_state", state="open", **R) == 1
    await asyncio.sleep(0.4)
    samples = await scrape(gateway)  # /metrics reads no breaker state: only the timer can have moved it
    assert value(samples, "gateway_breaker_state", state="open", **R) == 0
    assert value(samples, "gateway_breaker_state", state="half_open", **R) == 1
    assert (await (await gateway.get("/readyz")).json())["routes"][0]["breaker"]["state"] == "half_open"


async def test_status_never_shows_credentials_in_urls(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Item 6: user info and query values of the upstream and proxy URLs are masked in /status."""
    gateway = await make_gateway(
        upstream_url=f"{sim.url}?token=query-secret", upstream_proxy="http://proxyuser:proxy-password@127.0.0.1:9"
    )
    text = await (await gateway.get("/status")).text()
    for secret in ("query-secret", "proxyuser", "proxy-password"):
        assert secret not in text
    body = await (await gateway.get("/status")).json()
    assert body["settings"]["upstream_proxy"] == "http://***:***@127.0.0.1:9"
    assert body["readiness"]["routes"][0]["config"]["url"].endswith("?token=***")
    assert body["readiness"]["routes"][0]["config"]["proxy"] == "http://***:***@127.0.0.1:9"


async def test_invented_methods_do_not_become_metric_labels(make_gateway: GatewayFactory) -> None:
    """Item 7: methods the gateway does not route are counted under method="other"."""
    gateway = await make_gateway()
    before = await scrape(gateway)
    for method in ("PROPFIND", "QUERY", "MKCOL", "PURGE"):  # methods the C parser knows; any token with pure Python
        await gateway.request(method, "/v1/models")
    after = await scrape(gateway)
    assert not [labels for (_, labels) in after if ("method", "PROPFIND") in labels]
    assert delta(before, after, "gateway_http_requests_total", route="unmatched", method="other", code="405") == 4


@pytest.mark.parametrize(
    ("faults", "code", "fragment"),
    [
        (SimFaults(http_status=403, http_body="cloudflare", error_body_chunks=3), "upstream_blocked", "Cloudflare"),
        (SimFaults(http_status=500, error_body_chunks=3), "upstream_http_status", "simulated upstream error 500"),
    ],
    ids=["cloudflare-page", "json-error"],
)
async def test_error_bodies_are_classified_on_every_chunk(
    make_gateway: GatewayFactory, sim: Simulator, faults: SimFaults, code: str, fragment: str
) -> None:
    """Item 8: an error body that arrives in several network chunks is read whole before it is classified."""
    gateway = await make_gateway(retry_max=0)
    sim.faults = faults
    response = await gateway.post(CHAT, json=chat_body())
    error = (await response.json())["error"]
    assert (response.status, error["code"]) == (502, code)
    assert fragment in error["message"]


# -- one test per arrow of the README's state diagram (labels b0..b6, w1, w2, p1) ---------------


async def _breaker_state(gateway: GatewayClient) -> str:
    body = await (await gateway.get("/readyz")).json()
    return str(body["routes"][0]["breaker"]["state"])


async def _trip(make_gateway: GatewayFactory, sim: Simulator, **overrides: Any) -> GatewayClient:
    """A gateway (fail_max 2, no retries) whose breaker two upstream 503s have just opened."""
    gateway_client = await make_gateway(breaker_fail_max=2, retry_max=0, **overrides)
    sim.faults = SimFaults(http_status=503)
    for _ in range(2):
        assert (await gateway_client.post(CHAT, json=chat_body())).status == 502
    return gateway_client


async def test_arrow_b0_rejections_and_disconnects_keep_it_closed(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """b0: rejected requests, client disconnects and the gateway's own refusals leave the breaker closed at 0."""
    gateway = await make_gateway(breaker_fail_max=1, retry_max=0)
    sim.faults = SimFaults(reject_marker="POISON", reject_status=400)
    assert (await gateway.post(CHAT, json=chat_body("POISON"))).status == 400
    assert (await gateway.post(CHAT, json={"model": "no-such-model", "messages": []})).status in (400, 404)
    sim.faults = SimFaults(slow_first_token=5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await gateway.post(CHAT, json=chat_body())
    await eventually(lambda: gateway.app[UPSTREAM].limiter.in_use == 0)
    assert (gateway.app[ROUTES]["default"].breaker.state, gateway.app[ROUTES]["default"].breaker.consecutive_failures) == ("closed", 0)


async def test_arrow_b1_closed_to_open_on_consecutive_upstream_failures(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """b1: fail_max upstream failures in a row open the breaker; callers then get 503 circuit_open at once."""
    gateway = await _trip(make_gateway, sim)
    assert await _breaker_state(gateway) == "open"
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "circuit_open"


async def test_arrow_b2_open_to_half_open_when_the_period_ends(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """b2: the open period ends on time with no traffic; readiness shows half_open."""
    gateway = await _trip(make_gateway, sim, breaker_reset_seconds=0.2)
    await asyncio.sleep(0.3)
    samples = await scrape(gateway)  # /metrics reads no breaker state: only the timer can have moved it
    assert value(samples, "gateway_breaker_state", state="half_open", **R) == 1
    assert await _breaker_state(gateway) == "half_open"


async def test_arrow_b3_open_to_half_open_on_a_probe_success(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """b3: a successful probe ends a 300 s open period at once (it never closes the breaker itself)."""
    gateway = await _trip(make_gateway, sim, breaker_reset_seconds=300, breaker_reset_max_seconds=300)
    sim.faults = SimFaults()
    assert (await gateway.app[ROUTES]["default"].prober.probe_once()).ok
    assert await _breaker_state(gateway) == "half_open"


async def test_arrow_b4_half_open_to_closed_on_the_trial_first_token(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """b4: the trial's first token closes the breaker, before its stream has ended."""
    gateway = await _trip(make_gateway, sim, breaker_reset_seconds=0.1)
    await asyncio.sleep(0.15)
    sim.faults = SimFaults()
    response = await gateway.post(CHAT, json=chat_body(stream=True))
    assert response.status == 200
    await response.content.readline()  # the first event is on the wire: the trial has its first token
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"
    await response.read()


async def test_arrow_b5_half_open_to_open_on_a_failed_trial(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """b5: a failed trial re-opens the breaker for a longer period."""
    gateway = await _trip(make_gateway, sim, breaker_reset_seconds=0.1, breaker_reset_multiplier=4)
    await asyncio.sleep(0.15)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    breaker = gateway.app[ROUTES]["default"].breaker
    assert breaker.state == "open"
    assert breaker.current_open_duration == pytest.approx(0.4)


async def test_arrow_b6_half_open_stays_when_the_trial_decides_nothing(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """b6: a rejected trial keeps the breaker half-open and frees the trial for the next caller."""
    gateway = await _trip(make_gateway, sim, breaker_reset_seconds=0.1)
    await asyncio.sleep(0.15)
    sim.faults = SimFaults(reject_marker="POISON", reject_status=413)
    assert (await gateway.post(CHAT, json=chat_body("POISON"))).status == 413
    assert gateway.app[ROUTES]["default"].breaker.state == "half_open"
    assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"


async def test_arrow_w1_working_to_not_working_after_failed_probes(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """w1: unhealthy_threshold failed probes turn the flag off; chat is refused without reaching the upstream."""
    gateway = await make_gateway(probe_unhealthy_threshold=2)
    sim.faults = SimFaults(http_status=503)
    prober = gateway.app[ROUTES]["default"].prober
    await prober.probe_once()
    assert gateway.app[ROUTES]["default"].flag.working
    await prober.probe_once()
    assert not gateway.app[ROUTES]["default"].flag.working
    requests_before = sim.stats.requests_total
    response = await gateway.post(CHAT, json=chat_body())
    assert (response.status, (await response.json())["error"]["code"]) == (503, "upstream_not_working")
    assert sim.stats.requests_total == requests_before


async def test_arrow_w2_not_working_to_working_after_good_probes(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """w2: healthy_threshold good probes in a row turn the flag back on."""
    gateway = await make_gateway(probe_unhealthy_threshold=1, probe_healthy_threshold=2)
    prober = gateway.app[ROUTES]["default"].prober
    sim.faults = SimFaults(http_status=503)
    await prober.probe_once()
    sim.faults = SimFaults()
    await prober.probe_once()
    assert not gateway.app[ROUTES]["default"].flag.working
    await prober.probe_once()
    assert gateway.app[ROUTES]["default"].flag.working
    assert (await gateway.post(CHAT, json=chat_body())).status == 200


async def test_arrow_p1_a_trip_probes_at_once_a_failed_trial_does_not(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """p1: closed -> open by traffic probes at once; half_open -> open does not (no trial after every probe)."""
    gateway = await make_gateway(
        probe_enabled=True, probe_interval=600, breaker_fail_max=1, breaker_reset_seconds=0.2, retry_max=0
    )
    health = gateway.app[ROUTES]["default"].flag
    await eventually(lambda: health.probes_total == 1)  # the start-up probe
    sim.faults = SimFaults(http_status=503)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    await eventually(lambda: health.probes_total == 2, within=3.0)  # probed at once, and it failed
    await eventually(lambda: gateway.app[ROUTES]["default"].breaker.state == "half_open", within=2.0)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502  # the trial fails: open again
    await asyncio.sleep(0.3)
    assert health.probes_total == 2


# -- found by the review after the first landing of the model -----------------------------------



async def test_a_non_streaming_client_that_never_reads_is_cut(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A whole answer (written by write_eof) to a client that never reads is cut within the write timeout: 499."""
    gateway = await make_gateway(timeout_client_write=0.3, timeout_total=30)
    sim.faults = SimFaults(answer_bytes=8 * 1024 * 1024)
    before = await scrape(gateway)
    port = gateway.server.port
    assert port is not None
    writers = [await _stalled_request(port, stream=False) for _ in range(3)]
    try:
        await eventually(lambda: gateway.app[INFLIGHT].active == 0, within=10.0)
    finally:
        for writer in writers:
            writer.close()
    after = await scrape(gateway)
    assert delta(before, after, "gateway_http_requests_total", route=CHAT, method="POST", code="499") == 3
    assert gateway.app[UPSTREAM].limiter.in_use == 0


@pytest.mark.parametrize("status", [413, 429])
async def test_a_trickling_error_body_keeps_its_status(
    make_gateway: GatewayFactory, sim: Simulator, status: int
) -> None:
    """An error body slower than its short wait is classified on the status (and Retry-After), not as a timeout."""
    gateway = await make_gateway(timeout_first_token=1.5, retry_max=0, breaker_fail_max=2)
    sim.faults = SimFaults(http_status=status, retry_after=7, error_body_chunks=2, error_chunk_delay=2.0)
    for _ in range(2):
        response = await gateway.post(CHAT, json=chat_body())
        code = (await response.json())["error"]["code"]
        if status == 413:
            assert (response.status, code) == (413, "upstream_rejected_request")
        else:
            assert (response.status, code, response.headers.get("Retry-After")) == (429, "upstream_rate_limited", "7")
    if status == 413:
        assert gateway.app[ROUTES]["default"].breaker.consecutive_failures == 0


async def test_long_answers_cut_by_the_total_deadline_never_open_the_breaker(make_gateway: GatewayFactory) -> None:
    """A healthy upstream streaming past the request's own total deadline is no upstream failure.

    Not for the breaker, and not for the status page or the alert rules either: the metric counts it as
    kind="deadline", which they leave out (the client still sees upstream_timeout).
    """
    async with Simulator(SimOptions(chunk_delay=0.25, chunks=8)) as slow_sim:
        gateway = await make_gateway(upstream_url=slow_sim.url, timeout_total=1, breaker_fail_max=2, retry_max=0)
        route = gateway.app[ROUTES]["default"]
        before, page_before = await scrape(gateway), read_route(route.metrics)
        for _ in range(3):
            response = await gateway.post(CHAT, json=chat_body(stream=True))
            text = await response.text()
            assert response.status == 200
            assert "upstream_timeout" in text
            assert "total deadline" in text
        assert (route.breaker.state, route.breaker.consecutive_failures) == ("closed", 0)
        after, page_after = await scrape(gateway), read_route(route.metrics)
        labels = {"provider": "flowgpt", "route": "default"}
        assert delta(before, after, "gateway_upstream_errors_total", kind="deadline", **labels) == 3
        assert delta(before, after, "gateway_upstream_errors_total", kind="timeout", **labels) == 0
        assert page_after[:2] == [page_before[0] + 3, page_before[1]]  # three attempts, no route failure


def test_a_proxy_url_without_a_scheme_is_refused_without_echoing_it() -> None:
    """user:password@host as a proxy stops start-up with a message that does not repeat the credentials."""
    from gateway.settings import describe_validation_error

    with pytest.raises(ValidationError) as info:
        Settings(upstream_proxy="proxyuser:proxy-password@127.0.0.1:3128")
    message = describe_validation_error(info.value)
    assert message == "invalid setting GATEWAY_UPSTREAM_PROXY: must be an http:// or https:// URL with a host"
    assert mask_url("proxyuser:proxy-password@127.0.0.1:3128") == "***@127.0.0.1:3128"


async def test_the_idle_limit_does_not_shorten_the_wait_for_the_first_token(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Silence before the first token is judged by the first-token limit, not by the (shorter) idle limit."""
    gateway = await make_gateway(timeout_idle=0.3, timeout_first_token=2, retry_max=0)
    sim.faults = SimFaults(slow_first_token=0.8)
    for stream in (False, True):
        response = await gateway.post(CHAT, json=chat_body(stream=stream))
        assert response.status == 200
        assert "upstream_timeout" not in await response.text()


def test_an_upstream_url_without_a_host_stops_start_up_in_one_line() -> None:
    """GATEWAY_UPSTREAM_URL=http:// is refused by the settings, not by a traceback when the route is built."""
    from gateway.settings import describe_validation_error

    with pytest.raises(ValidationError) as info:
        Settings(upstream_url="http://")
    assert describe_validation_error(info.value) == (
        "invalid setting GATEWAY_UPSTREAM_URL: must be an http:// or https:// URL with a host"
    )


BROKEN_MODEL = "gpt-4-turbo"


async def test_arrow_m1_a_broken_model_does_not_cut_off_the_others(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """m1: one model failing 5xx is refused alone (503 naming it, Retry-After); callers of the other models keep getting 200."""
    gateway = await make_gateway(breaker_fail_max=3, retry_max=0)
    sim.faults = SimFaults(http_status=500, models=(BROKEN_MODEL,))
    assert (await gateway.post(CHAT, json=chat_body())).status == 200  # another model is served
    for _ in range(3):
        assert (await gateway.post(CHAT, json=chat_body(model=BROKEN_MODEL))).status == 502
    refused = await gateway.post(CHAT, json=chat_body(model=BROKEN_MODEL))
    assert refused.status == 503
    error = (await refused.json())["error"]
    assert error["code"] == "circuit_open"
    assert BROKEN_MODEL in error["message"]
    assert int(refused.headers["Retry-After"]) > 0
    for model in ("gpt-3.5-turbo", "claude-v2", "google-gemini", "gpt-3.5-turbo"):
        response = await gateway.post(CHAT, json=chat_body(model=model))
        assert response.status == 200, (model, await response.text())
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"


async def test_arrow_m2_failures_that_span_models_open_the_whole_route(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """m2: when the failing streak spans models (the upstream itself is down), the route opens for every model (b1)."""
    gateway = await make_gateway(breaker_fail_max=3, retry_max=0)
    assert (await gateway.post(CHAT, json=chat_body(model="claude-v2"))).status == 200
    sim.faults = SimFaults(http_status=500)
    for model in ("gpt-4-turbo", "gpt-3.5-turbo", "gpt-4-turbo"):
        assert (await gateway.post(CHAT, json=chat_body(model=model))).status == 502
    assert gateway.app[ROUTES]["default"].breaker.state == "open"
    refused = await gateway.post(CHAT, json=chat_body(model="claude-v2"))
    assert refused.status == 503
    assert (await refused.json())["error"]["message"].startswith("circuit breaker 'default' is open")
