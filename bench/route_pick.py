"""Micro-benchmark of the route pool: the admission check and the pick, with 1 and with 8 routes.

``python -m bench.route_pick`` prints microseconds per request for each and their difference
(same process, timeit best of 5), the part of the per-request cost that grows with routes.
"""

from __future__ import annotations

import asyncio
import timeit

import aiohttp
import orjson

from gateway.app import make_route
from gateway.metrics import Metrics
from gateway.route_pool import RoutePool
from gateway.settings import Settings

NUMBER = 200_000


async def _cost(session: aiohttp.ClientSession, count: int) -> float:
    """Microseconds for ``any_admits()`` + ``pick()`` over ``count`` healthy routes."""
    routes = [{"name": f"r{i}", "url": "http://127.0.0.1:9/v3/chat-anonymous"} for i in range(count)]
    settings = Settings(upstreams=orjson.dumps(routes).decode(), probe_enabled=False)
    metrics = Metrics(routes=tuple(spec.name for spec in settings.routes()))
    pool = RoutePool([make_route(session, spec, settings, metrics) for spec in settings.routes()])
    best = min(timeit.repeat(lambda: (pool.any_admits(), pool.pick()), number=NUMBER, repeat=5))
    return best / NUMBER * 1e6


async def _main() -> None:
    async with aiohttp.ClientSession() as session:
        one, eight = await _cost(session, 1), await _cost(session, 8)
    print(f"route pool per request: 1 route {one:.2f} us, 8 routes {eight:.2f} us, difference {eight - one:.2f} us")


if __name__ == "__main__":
    asyncio.run(_main())
