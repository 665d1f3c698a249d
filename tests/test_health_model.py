"""The health model's promises, through the simulator: one regression test per way a review made it lie.

Each test failed on the gateway before the health-model change (see the README's
"Resilience" section for the model these tests check).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from gateway.errors import UPSTREAM_ERROR_KINDS
from gateway.settings import Settings
from gateway.simulator import SimFaults, Simulator
from gateway.state import BREAKER, HEALTH, PROBER, UPSTREAM
from tests.conftest import GatewayFactory, chat_body
from tests.metrics_support import delta, scrape, value
from tests.polling import eventually

P = {"provider": "flowgpt"}
CHAT = "/v1/chat/completions"


async def test_requests_the_upstream_rejects_never_open_the_breaker(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Item 1: oversized or invalid requests get the upstream's 4xx and leave the breaker closed for everyone."""
    gateway = await make_gateway(breaker_fail_max=2, retry_max=0)
    sim.faults = SimFaults(reject_over_bytes=100_000, reject_marker="POISON", reject_status=422)
    before = await scrape(gateway)
    huge_system = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "x" * 60_000}],
    }
    for _ in range(5):
        response = await gateway.post(CHAT, json=huge_system)  # sent twice upstream: question and system
        assert response.status == 413
        error = (await response.json())["error"]
        assert error["code"] == "upstream_rejected_request"
        assert "too large" in error["message"]
        response = await gateway.post(CHAT, json=chat_body("POISON"))
        assert response.status == 422
        assert (await response.json())["error"]["code"] == "upstream_rejected_request"
    assert gateway.app[BREAKER].state == "closed"
    assert gateway.app[BREAKER].consecutive_failures == 0
    response = await gateway.post(CHAT, json=chat_body("an ordinary question"))
    assert response.status == 200
    after = await scrape(gateway)
    assert delta(before, after, "gateway_upstream_errors_total", kind="rejected", **P) == 10
    assert delta(before, after, "gateway_upstream_retries_total", **P) == 0
    for kind in UPSTREAM_ERROR_KINDS:
        if kind != "rejected":
            assert delta(before, after, "gateway_upstream_errors_total", kind=kind, **P) == 0, kind


async def test_a_successful_probe_lets_traffic_through_an_open_breaker(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Item 2: after a trip the immediate probe succeeds, so the next request is served, not refused for 300 s."""
    gateway = await make_gateway(
        probe_enabled=True, probe_interval=60, breaker_fail_max=1, breaker_reset_seconds=300, retry_max=0
    )
    await eventually(lambda: gateway.app[HEALTH].probes_total >= 1)  # the start-up probe
    sim.faults = SimFaults(http_status=500, count=1)  # exactly the live request fails
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    await eventually(lambda: gateway.app[HEALTH].probes_total >= 2, within=3.0)  # the probe the trip triggered
    assert gateway.app[HEALTH].last_probe is not None
    assert gateway.app[HEALTH].last_probe.ok
    assert gateway.app[BREAKER].state == "half_open"
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 200, await response.text()
    assert gateway.app[BREAKER].state == "closed"


async def test_the_probe_is_held_to_the_live_first_token_limit(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Item 3: the probe's limit defaults to the first-token limit, a stricter one is refused, a slow upstream passes."""
    assert Settings(timeout_first_token=30).probe_deadline == 30
    with pytest.raises(ValueError, match="GATEWAY_PROBE_TIMEOUT must be >= GATEWAY_TIMEOUT_FIRST_TOKEN"):
        Settings(timeout_first_token=30, probe_timeout=10)
    gateway = await make_gateway(timeout_first_token=1.5, timeout_total=5)
    sim.faults = SimFaults(slow_first_token=1.0)
    result = await gateway.app[PROBER].probe_once()
    assert result.ok, result.error
    assert (await gateway.post(CHAT, json=chat_body())).status == 200


async def _stalled_stream_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that asks for a stream and never reads it, with a tiny receive buffer so it backs up fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = b'{"model": "gpt-3.5-turbo", "stream": true, "messages": [{"role": "user", "content": "long"}]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    await writer.drain()
    return reader, writer


async def test_a_client_that_stops_reading_is_cut_and_frees_its_slot(
    make_gateway: GatewayFactory, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 4: a stalled stream reader is cut after the client write timeout: slot freed, 499, no upstream blame."""
    gateway = await make_gateway(max_concurrency=1, queue_timeout=0, timeout_client_write=0.5, timeout_total=30)
    sim.faults = SimFaults(answer_bytes=32 * 1024 * 1024)
    before = await scrape(gateway)
    port = gateway.server.port
    assert port is not None
    _, writer = await _stalled_stream_reader(port)
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
    assert gateway.app[BREAKER].consecutive_failures == 0
    for kind in UPSTREAM_ERROR_KINDS:
        assert delta(before, after, "gateway_upstream_errors_total", kind=kind, **P) == 0, kind
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
    assert value(samples, "gateway_breaker_state", state="open", **P) == 1
    await asyncio.sleep(0.4)
    samples = await scrape(gateway)  # /metrics reads no breaker state: only the timer can have moved it
    assert value(samples, "gateway_breaker_state", state="open", **P) == 0
    assert value(samples, "gateway_breaker_state", state="half_open", **P) == 1
    assert (await (await gateway.get("/readyz")).json())["breaker"]["state"] == "half_open"


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
    assert body["upstream_url"].endswith("?token=***")


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
