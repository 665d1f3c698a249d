"""No configured secret leaves the process, in any encoding, whatever an upstream or proxy echoes back.

A proxy on loopback answers every request with a 401 whose message quotes one secret in one
encoding (a token, a proxy password, the ``user:password`` pair that ``Proxy-Authorization: Basic``
carries; raw, percent-encoded, base64 with and without padding). Every outward surface is then
read: the client's error, /readyz, /status, /ui/data, the log, every key in Redis, and every
trace span's name, attributes and events.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app_keys import ROUTES
from gateway.simulator import Simulator
from monitoring.processes import eventually
from tests.fleet_support import CHAT, fleet_member
from tests.gateway_support import GatewayFactory, chat_body
from tests.redis_support import RedisServer

TOKEN = "sk-live-7f3a9c21e4b84d06"
USER, PASSWORD = "alice-proxy", "p@ss w/rd!x9"
PAIR = f"{USER}:{PASSWORD}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda text: text,
    "percent": lambda text: quote(text, safe=""),
    "base64": _b64,
    "base64-unpadded": lambda text: _b64(text).rstrip("="),
}
SECRETS = {"token": TOKEN, "proxy password": PASSWORD, "basic pair": PAIR}


def _forms() -> set[str]:
    """Every secret in every encoding: none may appear anywhere outside."""
    return {encode(secret) for secret in SECRETS.values() for encode in ENCODINGS.values()}


@pytest.fixture(name="echo_proxy")
async def echo_proxy_fixture() -> AsyncIterator[tuple[str, list[str]]]:
    """A proxy that refuses every request with a 401 quoting ``quoted[0]`` (set by the test)."""
    quoted = [""]

    async def refuse(request: web.Request) -> web.Response:
        message = f"invalid credentials: {quoted[0]} (got {request.headers.get('Proxy-Authorization', '-')})"
        return web.json_response({"error": {"message": message}}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://{quote(USER)}:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}", quoted
    await server.close()


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("secret", list(SECRETS))
async def test_a_secret_quoted_by_the_upstream_reaches_no_outward_surface(
    make_gateway: GatewayFactory,
    sim: Simulator,
    redis_server: RedisServer,
    echo_proxy: tuple[str, list[str]],
    caplog: pytest.LogCaptureFixture,
    secret: str,
    encoding: str,
) -> None:
    """The echoed secret is masked in the client error, /readyz, /status, /ui/data, the log, Redis and traces."""
    caplog.set_level(logging.INFO)
    proxy_url, quoted = echo_proxy
    quoted[0] = ENCODINGS[encoding](SECRETS[secret])
    prefix = redis_server.prefix()
    routes = json.dumps([{"name": "a", "url": sim.route_url("a"), "token": TOKEN, "proxy": proxy_url}])
    probing = {"probe_enabled": True, "probe_interval": 0.2, "probe_unhealthy_interval": 0.2}
    spans = InMemorySpanExporter()
    gateway = await fleet_member(
        make_gateway, sim, redis_server, prefix, upstreams=routes, span_exporter=spans, **probing
    )
    await eventually(lambda: gateway.app[ROUTES]["a"].flag.last_probe is not None, within=3.0)
    response = await gateway.post(CHAT, json=chat_body("hi"))
    surfaces = {"chat": (response.status, await response.text())}
    assert response.status in (502, 503)
    for path in ("/readyz", "/status", "/ui/data"):
        surfaces[path] = (0, await (await gateway.get(path)).text())
    surfaces["log"] = (0, caplog.text)
    surfaces["redis"] = (0, await _everything_under(redis_server, prefix))
    # The probe's 401 is traced (its span ends just after the flag takes the result).
    await eventually(lambda: any(span.name == "probe flowgpt" for span in spans.get_finished_spans()), within=3.0)
    finished = spans.get_finished_spans()
    surfaces["traces"] = (0, "\n".join(_span_text(span) for span in finished))
    assert "***" in surfaces["log"][1]  # the echo was logged, masked
    for name, (_, text) in surfaces.items():
        leaked = [form for form in _forms() if form in text]
        assert not leaked, f"{secret} ({encoding}) leaked through {name}: {leaked}"


def _span_text(span: ReadableSpan) -> str:
    """A span as text: its name, attributes, events and status, everything an exporter would send."""
    events = [(event.name, dict(event.attributes or {})) for event in span.events]
    return f"{span.name} {dict(span.attributes or {})} {events} {span.status.description}"


async def _everything_under(server: RedisServer, prefix: str) -> str:
    """Every key and value (strings and hashes) under ``prefix``, as one text."""
    client = redis.Redis.from_url(server.url)
    parts: list[str] = []
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            raw_kind = await client.type(key)
            kind = raw_kind.decode() if isinstance(raw_kind, bytes) else raw_kind
            value = await client.hgetall(key) if kind == "hash" else await client.get(key) if kind == "string" else b""
            parts.append(f"{key!r} {value!r}")
    finally:
        await client.aclose()
    return "\n".join(parts)
