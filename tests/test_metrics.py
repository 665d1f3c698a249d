"""The Prometheus contract: every series exists from start-up and real traffic moves it exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE

from gateway import __version__
from gateway.simulator import SimFaults, Simulator
from tests.gateway_support import GatewayFactory, chat_body
from tests.metric_contract import LABEL_VALUES, METRICS_CONTRACT
from tests.metrics_support import delta, scrape, value
from tests.tool_support import require_tool

Client = TestClient[web.Request, web.Application]
P = {"provider": "flowgpt"}
R = {**P, "route": "default"}  # the labels of an upstream series of the default route


# Upstream route labels are open (the configured routes); the test gateway has one.
CONFIGURED_ROUTES = {"route": frozenset({"default"}), "from_route": frozenset({"default"})}


def _label_sets(labels: tuple[str, ...]) -> list[dict[str, str]]:
    sets: list[dict[str, str]] = [{}]
    for label in labels:
        values = CONFIGURED_ROUTES.get(label) or LABEL_VALUES[label]
        sets = [{**s, label: v} for s in sets for v in sorted(values)]
    return sets


async def test_every_contract_series_exists_at_start(gateway: Client) -> None:
    """Each metric in the contract is exported with every label set of its closed value sets."""
    samples = await scrape(gateway)
    for spec in METRICS_CONTRACT:
        if spec.name.startswith("gateway_http_") or spec.name in ("gateway_build_info", "gateway_shared_state_up"):
            continue
        for labels in _label_sets(spec.labels):
            name = spec.name + ("_count" if spec.type == "histogram" else "")
            value(samples, name, **labels)
    assert value(samples, "gateway_build_info", version=__version__) == 1
    assert value(samples, "gateway_breaker_state", state="closed", **R) == 1
    assert value(samples, "gateway_breaker_state", state="open", **R) == 0
    assert value(samples, "gateway_provider_working", **R) == 1
    assert value(samples, "gateway_http_requests_total", route="/v1/chat/completions", method="POST", code="200") == 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert not any(name == "gateway_shared_state_up" for name, _ in samples)  # no fleet, nothing to lose


async def test_success_moves_exactly_the_right_series(gateway: Client) -> None:
    """One good chat request: +1 inbound, +1 attempt, one duration and one first-token sample, no errors."""
    before = await scrape(gateway)
    response = await gateway.post("/v1/chat/completions", json=chat_body(stream=True))
    await response.read()
    after = await scrape(gateway)
    route = {"route": "/v1/chat/completions"}
    assert delta(before, after, "gateway_http_requests_total", method="POST", code="200", **route) == 1
    assert delta(before, after, "gateway_http_request_duration_seconds_count", **route) == 1
    assert delta(before, after, "gateway_upstream_requests_total", **R) == 1
    assert delta(before, after, "gateway_upstream_request_duration_seconds_count", **R) == 1
    assert delta(before, after, "gateway_upstream_first_token_seconds_count", **R) == 1
    for kind in LABEL_VALUES["kind"]:
        assert delta(before, after, "gateway_upstream_errors_total", kind=kind, **R) == 0
    assert value(after, "gateway_inflight_requests", **R) == 0


def _error_cases() -> list[Any]:
    return [
        pytest.param(SimFaults(http_status=500), False, "http_status", 502, id="http_status"),
        pytest.param(SimFaults(http_status=429), False, "rate_limited", 429, id="rate_limited"),
        pytest.param(SimFaults(http_status=403, http_body="cloudflare"), False, "blocked", 502, id="blocked"),
        pytest.param(SimFaults(http_status=401), False, "auth", 502, id="auth"),
        pytest.param(SimFaults(html_200=True), False, "protocol", 502, id="protocol"),
        pytest.param(SimFaults(slow_first_token=1.0), False, "timeout", 504, id="timeout"),
        pytest.param(SimFaults(reset_after=2), True, "interrupted", 200, id="interrupted"),
        pytest.param(None, False, "connect", 502, id="connect"),
    ]


@pytest.mark.parametrize(("faults", "stream", "kind", "status"), _error_cases())
async def test_each_error_kind_is_counted_once(
    make_gateway: GatewayFactory, sim: Simulator, faults: SimFaults | None, stream: bool, kind: str, status: int
) -> None:
    """Each upstream failure increments exactly its own kind, and the inbound code is recorded."""
    gateway = await make_gateway(retry_max=0, timeout_first_token=0.3)
    before = await scrape(gateway)
    if faults is None:
        await sim.stop()
    else:
        sim.faults = faults
    response = await gateway.post("/v1/chat/completions", json=chat_body("a question long enough", stream=stream))
    await response.read()
    assert response.status == status
    after = await scrape(gateway)
    for other in LABEL_VALUES["kind"]:
        assert delta(before, after, "gateway_upstream_errors_total", kind=other, **R) == (1 if other == kind else 0)
    assert delta(before, after, "gateway_upstream_requests_total", **R) == 1
    assert delta(before, after, "gateway_upstream_request_duration_seconds_count", **R) == 1
    assert value(after, "gateway_inflight_requests", **R) == 0
    code = {"route": "/v1/chat/completions", "method": "POST", "code": str(status)}
    assert delta(before, after, "gateway_http_requests_total", **code) == 1


async def test_parse_failures_equal_bad_lines_sent(gateway: Client, sim: Simulator) -> None:
    """The parse-failure counter moves by exactly the number of garbage lines the simulator sent."""
    sim.faults = SimFaults(garbage_ratio=0.5)
    before = await scrape(gateway)
    for _ in range(5):
        response = await gateway.post("/v1/chat/completions", json=chat_body("count my garbage"))
        assert response.status == 200
    after = await scrape(gateway)
    sent = sim.stats.garbage_lines_sent
    assert sent > 0
    assert delta(before, after, "gateway_upstream_json_parse_failures_total", **R) == sent


async def test_route_label_is_the_template(gateway: Client) -> None:
    """Raw paths never become label values: parametrised routes use their template, unknown ones 'unmatched'."""
    await gateway.get("/v1/models/gemini")
    await gateway.get("/some/random/path/12345")
    samples = await scrape(gateway)
    assert value(samples, "gateway_http_requests_total", route="/v1/models/{id}", method="GET", code="200") == 1
    assert value(samples, "gateway_http_requests_total", route="unmatched", method="GET", code="404") == 1
    assert not any("12345" in str(labels) for _, labels in samples)


async def test_openmetrics_negotiation_with_exemplars(gateway: Client) -> None:
    """An OpenMetrics scrape gets that format, with the request id as an exemplar on latency."""
    await gateway.get("/healthz", headers={"X-Request-ID": "exemplar-check-1"})
    response = await gateway.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith(OPENMETRICS_CONTENT_TYPE)
    text = await response.text()
    assert text.rstrip().endswith("# EOF")
    assert 'request_id="exemplar-check-1"' in text


async def test_promtool_accepts_the_exposition(gateway: Client, sim: Simulator) -> None:
    """promtool check metrics finds no naming or format problems after real traffic."""
    await gateway.post("/v1/chat/completions", json=chat_body())
    text = await (await gateway.get("/metrics")).text()
    process = await asyncio.create_subprocess_exec(
        require_tool("promtool"),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(text.encode()), timeout=60)
    assert process.returncode == 0, output.decode()


async def test_longest_request_ids_still_get_answers(gateway: Client) -> None:
    """A 128-character request id is echoed and answered; its exemplar is cut to the OpenMetrics limit."""
    request_id = "r" * 128
    response = await gateway.get("/healthz", headers={"X-Request-ID": request_id})
    assert response.status == 200
    assert response.headers["X-Request-ID"] == request_id
    text = await (await gateway.get("/metrics", headers={"Accept": "application/openmetrics-text"})).text()
    assert 'request_id="' + "r" * 118 + '"' in text


async def test_the_gateways_own_time_is_counted_per_answered_chat_and_leaves_the_waits_out(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """gateway_overhead_seconds: one sample per answered chat, far below the time spent waiting on a slow upstream."""
    gateway = await make_gateway()
    sim.set_faults(SimFaults(slow_first_token=0.2))
    for stream in (False, True):
        response = await gateway.post("/v1/chat/completions", json=chat_body(stream=stream))
        await response.read()
    samples = await scrape(gateway)
    assert value(samples, "gateway_overhead_seconds_count", route="default") == 2
    overhead = value(samples, "gateway_overhead_seconds_sum", route="default")
    total = value(samples, "gateway_http_request_duration_seconds_sum", route="/v1/chat/completions")
    assert total > 0.4  # both waited 0.2 s for their first token
    assert overhead < 0.1, overhead  # the waits are not the gateway's own time


@pytest.mark.parametrize(("faults", "outcome"), [(None, "completed"), (SimFaults(reset_after=2), "error")])
async def test_stream_outcome_is_counted_once(
    make_gateway: GatewayFactory, sim: Simulator, faults: SimFaults | None, outcome: str
) -> None:
    """A stream answered 200 counts one outcome: ``error`` when an error event ended it (the client SLO's bad)."""
    gateway = await make_gateway(retry_max=0)
    if faults is not None:
        sim.faults = faults
    before = await scrape(gateway)
    response = await gateway.post("/v1/chat/completions", json=chat_body("abcdefghijkl", stream=True))
    assert response.status == 200
    await response.read()
    after = await scrape(gateway)
    for each in LABEL_VALUES["outcome"]:
        assert delta(before, after, "gateway_stream_outcomes_total", outcome=each) == (each == outcome), each
