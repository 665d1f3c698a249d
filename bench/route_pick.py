"""Micro-benchmark of the route pool: the admission check and the pick, with 1 and with 8 routes.

``python -m bench.route_pick`` prints microseconds per request for each and their difference
(same process, timeit best of 5), the part of the per-request cost that grows with routes.
"""

from __future__ import annotations

import argparse
import asyncio
import timeit
from collections.abc import Sequence

import aiohttp
import orjson

from gateway.app import make_route
from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.metrics import Metrics
from gateway.route_pool import RoutePool
from gateway.settings import Settings

NUMBER = 200_000


async def _cost(session: aiohttp.ClientSession, count: int, number: int) -> float:
    """Microseconds for ``refusal()`` + ``pick()`` over ``count`` healthy routes: the early refusal and the pick,
    as each request asks them."""
    routes = [{"name": f"r{i}", "url": "http://127.0.0.1:9" + UPSTREAM_PATH} for i in range(count)]
    settings = Settings(upstreams=orjson.dumps(routes).decode(), probe_enabled=False)
    metrics = Metrics(routes=tuple(spec.name for spec in settings.routes()))
    pool = RoutePool([make_route(session, spec, settings, metrics) for spec in settings.routes()])
    best = min(timeit.repeat(lambda: (pool.refusal(), pool.pick()), number=number, repeat=5))
    return best / number * 1e6


async def _measure(number: int) -> None:
    async with aiohttp.ClientSession() as session:
        one, eight = await _cost(session, 1, number), await _cost(session, 8, number)
    print(f"route pool per request: 1 route {one:.2f} us, 8 routes {eight:.2f} us, difference {eight - one:.2f} us")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.route_pick [--number N]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.route_pick", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--number", type=int, default=NUMBER, help="calls per timing (default %(default)s)")
    asyncio.run(_measure(parser.parse_args(argv).number))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
