"""Shared fixtures: a real simulator on loopback and a gateway in front of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.settings import Settings
from gateway.simulator import Simulator

GatewayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# Settings every test starts from: the probe is off unless a test turns it on, and
# retries are fast so failure paths take milliseconds.
TEST_DEFAULTS: dict[str, Any] = {
    "probe_enabled": False,
    "retry_backoff_base": 0.001,
    "retry_backoff_max": 0.005,
    "timeout_first_token": 2.0,
    "timeout_idle": 2.0,
    "timeout_total": 5.0,
    "uvloop": False,
}


def make_settings(upstream_url: str, **overrides: Any) -> Settings:
    """Settings for a gateway in front of ``upstream_url``, ignoring the caller's GATEWAY_* env."""
    if overrides.get("upstreams"):
        return Settings(**{**TEST_DEFAULTS, **overrides})  # the routes replace the single upstream
    return Settings(upstream_url=upstream_url, **{**TEST_DEFAULTS, **overrides})


@pytest.fixture(name="sim")
async def sim_fixture() -> AsyncIterator[Simulator]:
    """A healthy FlowGpt simulator on a free loopback port."""
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture(name="make_gateway")
async def make_gateway_fixture(sim: Simulator) -> AsyncIterator[GatewayFactory]:
    """Start gateways (real HTTP servers on loopback) in front of the simulator."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(**overrides: Any) -> TestClient[web.Request, web.Application]:
        upstream = overrides.pop("upstream_url", sim.url)
        clock = overrides.pop("clock", None)
        settings = make_settings(upstream, **overrides)
        app = create_app(settings) if clock is None else create_app(settings, clock=clock)
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(app, host="127.0.0.1", handler_cancellation=True)
        )
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
    await asyncio.sleep(0)


@pytest.fixture(name="gateway")
async def gateway_fixture(make_gateway: GatewayFactory) -> TestClient[web.Request, web.Application]:
    """A gateway with test defaults in front of the simulator."""
    return await make_gateway()


def chat_body(
    content: str = "Hello", *, stream: bool = False, model: str = "gpt-3.5-turbo", **extra: Any
) -> dict[str, Any]:
    """A minimal valid chat-completions request."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}], **extra}


def sse_events(raw: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]
