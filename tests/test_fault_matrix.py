"""Every simulator fault crossed with streaming and non-streaming: response, metrics, breaker, leaks.

Each cell starts a fresh gateway, warms it up with one good request (so the connection
pools and keep-alive connections exist), takes a baseline of open file descriptors,
asyncio tasks and upstream connections, injects one fault and checks what the client
saw, how the metrics moved, where the breaker stands, and that everything the request
opened is closed again.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app_keys import HTTP_SESSION, ROUTES, UPSTREAM
from gateway.errors import UPSTREAM_ERROR_KINDS
from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.metrics import ADMISSION_REASONS
from gateway.simulator import SimFaults, Simulator, expected_answer
from monitoring.processes import free_port
from tests.gateway_support import GatewayFactory, chat_body, sse_events
from tests.metrics_support import Samples, delta, scrape

Client = TestClient[web.Request, web.Application]

QUESTION: Final = "abcdefghijklmnopqrstuvwxyz0123456789"  # long enough for the simulator's 8 chunks
MODEL: Final = "gpt-3.5-turbo"
CUT: Final = 2  # text chunks sent before a mid-stream stall or reset
# Short deadlines so timeout cells take a quarter of a second, not the production 30 s.
FAST: Final[dict[str, Any]] = {"timeout_first_token": 0.2, "timeout_idle": 0.2, "timeout_total": 5.0}
SETTLE_SECONDS: Final = 1.0
CHAT_ROUTE: Final = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Fault:
    """One upstream fault and what the gateway must make of it.

    ``faults`` None means the simulator is stopped (connection refused). ``mid_stream``
    faults break after text was sent: a streaming client gets 200 and a final error
    event, a non-streaming one a clean error. ``retries`` is how many retries the
    gateway makes with ``retry_max=2``.
    """

    id: str
    faults: SimFaults | None
    status: int = 200
    code: str | None = None
    kind: str | None = None
    mid_stream: bool = False
    retries: int = 0
    retry_after: str | None = None

    @property
    def fails(self) -> bool:
        """Whether the request ends in an error at all."""
        return self.code is not None


FAULTS: Final = (
    Fault("500", SimFaults(http_status=500), 502, "upstream_http_status", "http_status", retries=2),
    Fault("502", SimFaults(http_status=502), 502, "upstream_http_status", "http_status", retries=2),
    Fault(
        "503-html",
        SimFaults(http_status=503, http_body="<html><body><h1>503 Service Unavailable</h1></body></html>"),
        502,
        "upstream_http_status",
        "http_status",
        retries=2,
    ),
    Fault("504", SimFaults(http_status=504), 502, "upstream_http_status", "http_status", retries=2),
    # A Retry-After beyond the request's deadline is passed on, never waited out.
    Fault(
        "429-retry-after",
        SimFaults(http_status=429, retry_after=30),
        429,
        "upstream_rate_limited",
        "rate_limited",
        retry_after="30",
    ),
    # Every attempt a 429 with no Retry-After: the client's 429 says 1 s.
    Fault("429", SimFaults(http_status=429), 429, "upstream_rate_limited", "rate_limited", retries=2, retry_after="1"),
    Fault("402", SimFaults(http_status=402), 502, "upstream_rate_limited", "rate_limited"),
    Fault("401", SimFaults(http_status=401), 502, "upstream_auth", "auth"),
    Fault("403-plain", SimFaults(http_status=403, http_body="Forbidden"), 502, "upstream_http_status", "http_status"),
    Fault("403-cloudflare", SimFaults(http_status=403, http_body="cloudflare"), 502, "upstream_blocked", "blocked"),
    Fault("slow-first-token", SimFaults(slow_first_token=1.0), 504, "upstream_timeout", "timeout", retries=2),
    Fault("stall-at-start", SimFaults(stall_after=0), 504, "upstream_timeout", "timeout", retries=2),
    # After the first token a plain answer is replayed (its client has seen nothing); a stream is not.
    Fault("stall-after", SimFaults(stall_after=CUT), 504, "upstream_timeout", "timeout", mid_stream=True, retries=2),
    Fault("reset-at-start", SimFaults(reset_after=0), 502, "upstream_interrupted", "interrupted"),
    Fault(
        "reset-after", SimFaults(reset_after=CUT), 502, "upstream_interrupted", "interrupted", mid_stream=True, retries=2
    ),
    Fault("garbage", SimFaults(garbage_ratio=1.0)),
    Fault("html-200", SimFaults(html_200=True), 502, "upstream_protocol", "protocol"),
    Fault("empty-stream", SimFaults(empty_stream=True), 502, "upstream_protocol", "protocol"),
    Fault("refused", None, 502, "upstream_connect", "connect", retries=2),
)
FAILING: Final = tuple(fault for fault in FAULTS if fault.fails)
MODES: Final = (pytest.param(False, id="plain"), pytest.param(True, id="stream"))


def _fault_params(faults: tuple[Fault, ...]) -> list[Any]:
    return [pytest.param(fault, id=fault.id) for fault in faults]


@dataclass(frozen=True, slots=True)
class Baseline:
    """What is open in the process while the gateway idles after a good request."""

    fds: int
    tasks: int
    idle_connections: int


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _connections(gateway: Client) -> tuple[int, int]:
    """(acquired, idle) connections of the gateway's upstream connector."""
    connector = gateway.app[HTTP_SESSION].connector
    assert connector is not None
    idle = sum(1 for conns in connector._conns.values() for proto, _ in conns if proto.is_connected())
    return len(connector._acquired), idle


def _baseline(gateway: Client) -> Baseline:
    return Baseline(_open_fds(), len(asyncio.all_tasks()), _connections(gateway)[1])


async def _assert_no_leaks(gateway: Client, sim: Simulator, baseline: Baseline) -> None:
    """Within a short bounded settle, fds, tasks and connections are back to (at most) the baseline."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        acquired, idle = _connections(gateway)
        now = Baseline(_open_fds(), len(asyncio.all_tasks()), idle)
        clean = (
            acquired == 0
            and now.idle_connections <= baseline.idle_connections
            and now.fds <= baseline.fds
            and now.tasks <= baseline.tasks
            and gateway.app[UPSTREAM].limiter.in_use == 0
            and sim.stats.active_streams == 0
        )
        if clean or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert acquired == 0, "an upstream connection is still checked out"
    assert gateway.app[UPSTREAM].limiter.in_use == 0, "a concurrency slot was not released"
    assert sim.stats.active_streams == 0, "the simulator still streams to the gateway"
    assert now.idle_connections <= baseline.idle_connections
    assert now.fds <= baseline.fds, f"file descriptors grew from {baseline.fds} to {now.fds}"
    assert now.tasks <= baseline.tasks, f"tasks grew: {[t.get_coro() for t in asyncio.all_tasks()]}"


async def _warm_gateway(make_gateway: GatewayFactory, **overrides: Any) -> Client:
    gateway = await make_gateway(**{**FAST, **overrides})
    # The first request also opens the pooled connection; on a loaded machine that can miss the
    # 0.2 s first-token limit, and the warm-up is not what the cells test.
    for _ in range(3):
        response = await gateway.post(CHAT_ROUTE, json=chat_body(QUESTION))
        await response.read()
        if response.status == 200:
            break
    assert response.status == 200
    return gateway


async def _inject(sim: Simulator, fault: Fault) -> None:
    if fault.faults is None:
        await sim.stop()
    else:
        sim.faults = fault.faults
    sim.stats.reset()


async def _request(gateway: Client, fault: Fault, *, stream: bool) -> None:
    """Send one request and assert exactly what the client sees."""
    response = await gateway.post(CHAT_ROUTE, json=chat_body(QUESTION, stream=stream))
    answer = expected_answer(MODEL, QUESTION)
    if not fault.fails:
        assert response.status == 200
        if stream:
            events = sse_events(await response.text())
            assert events[-1] == "[DONE]"
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
        else:
            text = (await response.json())["choices"][0]["message"]["content"]
        assert text == answer
        return
    if stream and fault.mid_stream:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(await response.text())
        assert "[DONE]" not in events
        final = json.loads(events[-1])
        assert set(final) == {"error"}
        assert final["error"]["code"] == fault.code
        assert final["error"]["type"] == "upstream_error"
        chunks = [json.loads(e)["choices"][0]["delta"] for e in events[1:-1]]
        assert len(chunks) == CUT
        assert answer.startswith("".join(chunk["content"] for chunk in chunks))
        return
    assert response.status == fault.status
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == fault.code
    assert error["type"] == ("rate_limit_error" if fault.status == 429 else "upstream_error")
    assert error["param"] is None
    assert isinstance(error["message"], str)
    assert error["message"]
    assert response.headers.get("Retry-After") == fault.retry_after


def _assert_metric_deltas(before: Samples, after: Samples, fault: Fault, *, attempts: int, parse_failures: int) -> None:
    labels = {"provider": "flowgpt", "route": "default"}
    assert delta(before, after, "gateway_upstream_requests_total", **labels) == attempts
    assert delta(before, after, "gateway_upstream_retries_total", **labels) == attempts - 1
    for kind in UPSTREAM_ERROR_KINDS:
        expected = attempts if kind == fault.kind else 0
        assert delta(before, after, "gateway_upstream_errors_total", kind=kind, **labels) == expected, kind
    for reason in ADMISSION_REASONS:
        assert delta(before, after, "gateway_admission_rejections_total", reason=reason, provider="flowgpt") == 0
    assert delta(before, after, "gateway_upstream_json_parse_failures_total", **labels) == parse_failures
    assert after[("gateway_inflight_requests", frozenset(labels.items()))] == 0


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize("fault", _fault_params(FAULTS))
async def test_fault_cell(make_gateway: GatewayFactory, sim: Simulator, fault: Fault, stream: bool) -> None:
    """Without retries one fault gives the documented response, one counted attempt, a closed breaker, no leaks."""
    gateway = await _warm_gateway(make_gateway, retry_max=0, breaker_fail_max=3)
    baseline = _baseline(gateway)
    before = await scrape(gateway)
    await _inject(sim, fault)

    await _request(gateway, fault, stream=stream)

    after = await scrape(gateway)
    code = str(200 if stream and fault.mid_stream else fault.status)
    assert delta(before, after, "gateway_http_requests_total", route=CHAT_ROUTE, method="POST", code=code) == 1
    _assert_metric_deltas(before, after, fault, attempts=1, parse_failures=sim.stats.garbage_lines_sent)
    if fault.id == "garbage":
        assert sim.stats.garbage_lines_sent >= 8  # one before each text chunk
    assert sim.stats.requests_total == (0 if fault.faults is None else 1)
    breaker = gateway.app[ROUTES]["default"].breaker
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == (1 if fault.fails else 0)
    await _assert_no_leaks(gateway, sim, baseline)


@pytest.mark.parametrize("fault", _fault_params(FAULTS))
async def test_fault_cell_with_retries(make_gateway: GatewayFactory, sim: Simulator, fault: Fault) -> None:
    """With retry_max=2 retryable faults before the first token, and any fault while a plain answer is read, are retried."""
    gateway = await _warm_gateway(make_gateway, retry_max=2, breaker_fail_max=10)
    baseline = _baseline(gateway)
    before = await scrape(gateway)
    await _inject(sim, fault)

    await _request(gateway, fault, stream=False)

    after = await scrape(gateway)
    attempts = 1 + fault.retries
    _assert_metric_deltas(before, after, fault, attempts=attempts, parse_failures=sim.stats.garbage_lines_sent)
    assert sim.stats.requests_total == (0 if fault.faults is None else attempts)
    breaker = gateway.app[ROUTES]["default"].breaker
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == (attempts if fault.fails else 0)
    await _assert_no_leaks(gateway, sim, baseline)


@pytest.mark.parametrize("fault", _fault_params(tuple(f for f in FAULTS if f.id in ("503-html", "refused"))))
async def test_streaming_request_is_retried_before_its_first_token(
    make_gateway: GatewayFactory, sim: Simulator, fault: Fault
) -> None:
    """A streaming request is retried like a plain one as long as nothing was sent to the client."""
    gateway = await _warm_gateway(make_gateway, retry_max=2, breaker_fail_max=10)
    before = await scrape(gateway)
    await _inject(sim, fault)
    await _request(gateway, fault, stream=True)
    after = await scrape(gateway)
    _assert_metric_deltas(before, after, fault, attempts=3, parse_failures=0)


def _breaker_cells() -> list[Any]:
    # Before the first token a stream fails exactly like a plain request; only mid-stream faults differ.
    plain = [pytest.param(fault, False, id=f"{fault.id}-plain") for fault in FAILING]
    return plain + [pytest.param(fault, True, id=f"{fault.id}-stream") for fault in FAILING if fault.mid_stream]


@pytest.mark.parametrize(("fault", "stream"), _breaker_cells())
async def test_breaker_opens_at_fail_max(
    make_gateway: GatewayFactory, sim: Simulator, fault: Fault, stream: bool
) -> None:
    """fail_max consecutive failures of any kind open the breaker; the next request is refused without upstream."""
    gateway = await _warm_gateway(make_gateway, retry_max=0, breaker_fail_max=2)
    baseline = _baseline(gateway)
    before = await scrape(gateway)
    await _inject(sim, fault)
    states = []
    for _ in range(2):
        await _request(gateway, fault, stream=stream)
        states.append(gateway.app[ROUTES]["default"].breaker.state)
    assert states == ["closed", "open"]
    upstream_calls = sim.stats.requests_total

    refused = await gateway.post(CHAT_ROUTE, json=chat_body(QUESTION, stream=stream))
    assert refused.status == 503
    error = (await refused.json())["error"]
    assert error["code"] == "circuit_open"
    assert refused.headers["Retry-After"] == "30"  # the default breaker_reset_seconds
    assert sim.stats.requests_total == upstream_calls

    after = await scrape(gateway)
    labels = {"provider": "flowgpt", "route": "default"}
    assert delta(before, after, "gateway_upstream_requests_total", **labels) == 2
    assert delta(before, after, "gateway_upstream_errors_total", kind=str(fault.kind), **labels) == 2
    assert delta(before, after, "gateway_breaker_transitions_total", to_state="open", source="local", **labels) == 1
    assert delta(before, after, "gateway_admission_rejections_total", reason="breaker_open", provider="flowgpt") == 1
    assert after[("gateway_breaker_state", frozenset({**labels, "state": "open"}.items()))] == 1
    await _assert_no_leaks(gateway, sim, baseline)


# -- the matrix with three routes: the fault on route a only, b and c healthy ----------------------


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize("fault", _fault_params(FAULTS))
async def test_fault_cell_on_one_of_three_routes(
    make_gateway: GatewayFactory, sim: Simulator, fault: Fault, stream: bool
) -> None:
    """A fault on the route tried first costs the client nothing unless it strikes a stream after its first token."""
    # Route a is picked first: weights 1000 against 0.001 make another first pick a one-in-a-million
    # event (with weight 1, one run in ten had a cell flake). "refused" points a at a dead port.
    url_a = f"http://127.0.0.1:{free_port()}{UPSTREAM_PATH}" if fault.faults is None else sim.route_url("a")
    routes = [{"name": "a", "url": url_a, "weight": 1000}] + [
        {"name": name, "url": sim.route_url(name), "weight": 0.001} for name in ("b", "c")
    ]
    # The healthy routes get three times FAST's limits: on a loaded machine an answer from b once
    # missed 0.2 s, failed over again to c and counted two failovers (the faults' delays stay longer).
    gateway = await _warm_gateway(
        make_gateway,
        upstreams=json.dumps(routes),
        retry_max=2,
        breaker_fail_max=10,
        timeout_first_token=0.6,
        timeout_idle=0.6,
    )
    baseline = _baseline(gateway)
    before = await scrape(gateway)
    if fault.faults is not None:
        sim.set_faults(fault.faults, route="a")
    sim.stats.reset()

    # A plain answer broken after its first token is replayed elsewhere: its client has seen nothing.
    served_elsewhere = fault.fails and (not fault.mid_stream or not stream)
    await _request(gateway, Fault(fault.id, None) if served_elsewhere else fault, stream=stream)

    after = await scrape(gateway)
    assert delta(before, after, "gateway_failovers_total", from_route="a") == (1 if served_elsewhere else 0)
    elsewhere = sum(delta(before, after, "gateway_route_selected_total", route=name) for name in ("b", "c"))
    assert elsewhere == (1 if served_elsewhere else 0)
    sim.set_faults(SimFaults(), route="a")
    await _assert_no_leaks(gateway, sim, baseline)
