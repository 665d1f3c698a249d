"""Traces: the span tree of a request, traceparent in and (only when allowed) out, and export off the request path."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app_keys import TRACING
from gateway.simulator import SimFaults, Simulator
from gateway.tracing import traces_url
from monitoring.processes import free_port
from tests.fleet_support import CHAT, Client, fleet_routes
from tests.gateway_support import GatewayFactory, chat_body

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _spans(gateway: Client, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert gateway.app[TRACING].flush()
    return list(exporter.get_finished_spans())


async def test_a_failed_over_request_is_one_server_span_with_an_attempt_span_per_route(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Route a fails (500), b answers: the server span has two attempt children with their routes and outcomes."""
    exporter = InMemorySpanExporter()
    gateway = await make_gateway(upstreams=fleet_routes(sim), retry_max=1, span_exporter=exporter)
    sim.set_faults(SimFaults(http_status=500), route="a")
    response = await gateway.post(CHAT, json=chat_body("hi"))
    assert response.status == 200
    await response.read()
    spans = _spans(gateway, exporter)
    server = next(span for span in spans if span.name == "POST /v1/chat/completions")
    attempts = sorted((span for span in spans if span.name == "chat flowgpt"), key=lambda span: span.start_time or 0)
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gateway.request_id"] == response.headers["X-Request-ID"]
    assert [span.parent.span_id if span.parent else None for span in attempts] == [server.context.span_id] * 2
    first, second = (dict(span.attributes or {}) for span in attempts)
    assert (first["gateway.route"], first["gateway.attempt.reason"], first["gateway.outcome"]) == ("a", "first", "http_status")
    assert first["http.response.status_code"] == 500
    assert (second["gateway.route"], second["gateway.attempt.reason"], second["gateway.outcome"]) == (
        "b",
        "failover",
        "completed",
    )
    assert isinstance(second["gateway.first_token_seconds"], float)
    assert second["gen_ai.request.model"]
    print(_tree(spans))


async def test_an_incoming_traceparent_is_honoured(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """The server span continues the caller's trace: same trace id, the caller's span as its parent."""
    exporter = InMemorySpanExporter()
    gateway = await make_gateway(span_exporter=exporter)
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    response = await gateway.post(CHAT, json=chat_body("hi"), headers=headers)
    await response.read()
    server = next(span for span in _spans(gateway, exporter) if span.name.startswith("POST"))
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID


async def test_traceparent_goes_to_flowgpt_only_when_allowed(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """FlowGpt is a third party: no traceparent by default; with the setting, the attempt's context goes out."""
    for allowed in (False, True):
        gateway = await make_gateway(span_exporter=InMemorySpanExporter(), otlp_propagate_upstream=allowed)
        response = await gateway.post(CHAT, json=chat_body("hi"), headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        await response.read()
        sent = {name.lower(): value for name, value in (sim.stats.last_headers or {}).items()}
        assert ("traceparent" in sent) is allowed
        if allowed:
            assert TRACE_ID in sent["traceparent"]


async def test_exemplars_carry_the_trace_id_beside_the_request_id(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """With tracing on, the request-duration exemplar names the trace as well as the request."""
    gateway = await make_gateway(span_exporter=InMemorySpanExporter())
    response = await gateway.post(CHAT, json=chat_body("hi"), headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    await response.read()
    metrics = await gateway.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    text = await metrics.text()
    assert f'trace_id="{TRACE_ID}"' in text


@pytest.fixture(name="collector")
async def collector_fixture() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """A real OTLP/HTTP receiver on loopback: POST /v1/traces, protobuf bodies decoded."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", received
    await server.close()


async def test_spans_reach_a_real_otlp_http_receiver(
    make_gateway: GatewayFactory, sim: Simulator, collector: tuple[str, list[ExportTraceServiceRequest]]
) -> None:
    """GATEWAY_OTLP_ENDPOINT: the request's spans arrive as OTLP protobuf, named and attributed."""
    endpoint, received = collector
    gateway = await make_gateway(otlp_endpoint=endpoint)
    response = await gateway.post(CHAT, json=chat_body("hi"))
    await response.read()
    await asyncio.to_thread(gateway.app[TRACING].flush)
    names = {
        span.name
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }
    assert {"POST /v1/chat/completions", "chat flowgpt"} <= names
    services = {
        attribute.value.string_value
        for message in received
        for resource in message.resource_spans
        for attribute in resource.resource.attributes
        if attribute.key == "service.name"
    }
    assert services == {"flowgpt-gateway"}


@pytest.fixture(name="hung_collector")
async def hung_collector_fixture() -> AsyncIterator[str]:
    """A collector that accepts connections and never answers."""
    gate = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/traces", hang)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    gate.set()
    await server.close()


@pytest.mark.parametrize("where", ["down", "hung"])
async def test_a_collector_that_is_down_or_hangs_costs_no_request_anything(
    make_gateway: GatewayFactory, sim: Simulator, hung_collector: str, where: str
) -> None:
    """Chats keep their latency and status; closing the gateway is not held up by the export."""
    endpoint = f"http://127.0.0.1:{free_port()}" if where == "down" else hung_collector
    plain = await make_gateway()
    traced = await make_gateway(otlp_endpoint=endpoint)
    timings: dict[str, list[float]] = {"plain": [], "traced": []}
    for _ in range(3):  # alternated, so a noisy neighbour hits both alike
        for name, gateway in (("plain", plain), ("traced", traced)):
            for _ in range(10):
                started = time.perf_counter()
                response = await gateway.post(CHAT, json=chat_body("hi"))
                await response.read()
                assert response.status == 200
                timings[name].append(time.perf_counter() - started)
        await asyncio.sleep(0.4)  # let the exporter's batches go (and fail) meanwhile
    median = {name: sorted(values)[len(values) // 2] for name, values in timings.items()}
    assert median["traced"] < median["plain"] * 2 + 0.005, median
    started = time.perf_counter()
    await traced.close()
    assert time.perf_counter() - started < 4.0


def test_a_collectors_base_url_gets_the_traces_path() -> None:
    """Base URL or full URL: either way the exporter posts to /v1/traces."""
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def _tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree with their gateway attributes (printed for the closing note)."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        by_parent.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: s.start_time or 0):
            shown: dict[str, Any] = {
                k: v for k, v in (span.attributes or {}).items() if k.startswith(("gateway.", "http.response"))
            }
            lines.append("  " * depth + f"{span.name} {json.dumps(shown, sort_keys=True)}")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


async def test_the_traceparent_sent_upstream_names_the_attempt_span(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """With propagation on, FlowGpt's parent is the attempt's span, not the request's."""
    exporter = InMemorySpanExporter()
    gateway = await make_gateway(span_exporter=exporter, otlp_propagate_upstream=True)
    response = await gateway.post(CHAT, json=chat_body("hi"), headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    await response.read()
    attempt = next(span for span in _spans(gateway, exporter) if span.name == "chat flowgpt")
    sent = {name.lower(): value for name, value in (sim.stats.last_headers or {}).items()}
    assert sent["traceparent"].split("-")[2] == format(attempt.context.span_id, "016x")


async def test_an_unsampled_trace_is_named_by_no_exemplar(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A caller's traceparent with sampled=00 exports nothing, so no exemplar may point at it."""
    exporter = InMemorySpanExporter()
    gateway = await make_gateway(span_exporter=exporter)
    response = await gateway.post(CHAT, json=chat_body("hi"), headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    await response.read()
    assert not [span for span in _spans(gateway, exporter) if format(span.context.trace_id, "032x") == TRACE_ID]
    metrics = await gateway.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert f'trace_id="{TRACE_ID}"' not in await metrics.text()
