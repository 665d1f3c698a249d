"""Fleet members for tests: full gateway apps sharing one real Redis, in front of the simulator."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app_keys import FLEET, ROUTES
from gateway.breaker import CircuitBreaker
from gateway.events import BreakerChanged
from gateway.scope import Scopes
from gateway.simulator import Simulator
from monitoring.processes import eventually
from tests.gateway_support import GatewayFactory, chat_body
from tests.redis_support import RedisServer

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"
ADMIN = {"Authorization": "Bearer fleet-admin"}


def fleet_routes(sim: Simulator) -> str:
    """GATEWAY_UPSTREAMS for routes a and b through the simulator."""
    # Route a takes (nearly) every call while it admits; b is where calls go when it does not.
    return json.dumps(
        [
            {"name": "a", "url": sim.route_url("a"), "weight": 1000},
            {"name": "b", "url": sim.route_url("b"), "weight": 0.001},
        ]
    )


def only_route_a(sim: Simulator) -> str:
    """GATEWAY_UPSTREAMS for route a alone: with it refusing, callers are refused, not failed over."""
    return json.dumps([{"name": "a", "url": sim.route_url("a")}])


async def fleet_member(
    make_gateway: GatewayFactory, sim: Simulator, redis: RedisServer, prefix: str, **extra: Any
) -> Client:
    """A gateway with routes a (preferred) and b sharing state under ``prefix``, once it shares."""
    settings: dict[str, Any] = {
        "upstreams": fleet_routes(sim),
        "redis_url": redis.url,
        "redis_prefix": prefix,
        "retry_max": 1,
        "breaker_fail_max": 2,
        "admin_token": "fleet-admin",
        **extra,
    }
    gateway = await make_gateway(**settings)
    await eventually(lambda: gateway.app[FLEET].up, within=5)
    return gateway


async def chat(gateway: Client) -> int:
    """One plain chat; its status."""
    response = await gateway.post(CHAT, json=chat_body("fleet"))
    await response.read()
    return response.status


def breaker(gateway: Client, route: str = "a") -> CircuitBreaker:
    """The member's breaker of ``route``."""
    return gateway.app[ROUTES][route].breaker


def scope_of(sim: Simulator, route: str = "a") -> str:
    """The upstream scope of a fleet member's route (reached directly, no proxy)."""
    return Scopes.of(route, sim.route_url(route), None, None).upstream


async def trip(member: Client, route: str = "a", *, within: float = 10.0) -> list[int]:
    """Chat through ``member`` until its breaker of ``route`` opens (the upstream must be failing); the statuses.

    It waits for the transition, not for a read of the state: with a short open period a loaded host can
    read the breaker half-open again after every slow chat, and a loop on the state alone never ended.
    """
    opened = asyncio.Event()

    def seen(event: BreakerChanged) -> None:
        if event.new == "open":
            opened.set()

    member.app[ROUTES][route].events.subscribe(BreakerChanged, seen)
    statuses: list[int] = []
    deadline = time.monotonic() + within
    while not opened.is_set() and breaker(member, route).state != "open":
        assert time.monotonic() < deadline, f"route {route} did not open within {within} s; chats: {statuses}"
        statuses.append(await chat(member))
    return statuses
