"""Shared fixtures: a real simulator on loopback and a gateway in front of it (helpers: gateway_support)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.simulator import SimOptions, Simulator
from tests.gateway_support import GatewayFactory, make_settings
from tests.redis_support import RedisCutter, RedisServer


@pytest.fixture(name="sim")
async def sim_fixture() -> AsyncIterator[Simulator]:
    """A healthy FlowGpt simulator on a free loopback port (seeded: ratio draws repeat run to run)."""
    async with Simulator(SimOptions(seed=1)) as simulator:
        yield simulator


@pytest.fixture(name="session")
async def session_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without keep-alive, so restarts never meet a stale pooled socket."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture(name="raw_redis")
async def raw_redis_fixture(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    """A plain client to the test's Redis, to read or write what a peer or an operator would."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(name="relay")
async def relay_fixture(redis_server: RedisServer) -> AsyncIterator[RedisCutter]:
    """A relay in front of the test's Redis for one member, which the test can cut, slow or silence."""
    cutter = RedisCutter(redis_server.port)
    await cutter.start()
    yield cutter
    await cutter.stop()


@pytest.fixture(name="make_gateway")
async def make_gateway_fixture(sim: Simulator) -> AsyncIterator[GatewayFactory]:
    """Start gateways (real HTTP servers on loopback) in front of the simulator."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def factory(**overrides: Any) -> TestClient[web.Request, web.Application]:
        upstream = overrides.pop("upstream_url", sim.url)
        clock = overrides.pop("clock", None)
        span_exporter = overrides.pop("span_exporter", None)
        settings = make_settings(upstream, **overrides)
        if clock is None:
            app = create_app(settings, span_exporter=span_exporter)
        else:
            app = create_app(settings, clock=clock, span_exporter=span_exporter)
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


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A real redis-server of its own (tests pause and kill it), stopped afterwards."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
