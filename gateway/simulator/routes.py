"""Routes: named copies of the chat endpoint, each with its own faults and stats.

The gateway reaches FlowGpt through several routes (egress proxies, tokens), each
with its own breaker, so one simulator serves ``/r/<route>/v3/chat-anonymous`` for
any valid name and a test can break one route while the others answer. The plain
``/v3/chat-anonymous`` is the route ``default``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import ClassVar, Final

from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator.faults import SimFaults
from gateway.simulator.stats import SimStats

DEFAULT_ROUTE: Final = "default"
ROUTE_NAME: Final = re.compile(r"[a-z0-9_-]{1,32}")
# The aiohttp path of a route's chat endpoint; the name is checked by the handler, so
# a bad one gets a JSON 400 rather than aiohttp's plain-text 404.
ROUTE_PATH: Final = "/r/{route}" + UPSTREAM_PATH


class RouteError(ValueError):
    """A route that cannot be served; ``status`` is the HTTP answer for it."""

    status: ClassVar[int] = 400


class RouteNameError(RouteError):
    """The name does not match ``[a-z0-9_-]{1,32}``."""

    status = 400


class RouteLimitError(RouteError):
    """A new route beyond the simulator's ``max_routes``."""

    status = 404


def check_route_name(name: str) -> str:
    """``name`` if it is a valid route name, else ``RouteNameError``."""
    if ROUTE_NAME.fullmatch(name) is None:
        # Cut, since the name comes from a URL: the message should not echo kilobytes.
        raise RouteNameError(f"invalid route name {name[:40]!r}: must match {ROUTE_NAME.pattern}")
    return name


def route_path(name: str) -> str:
    """The chat path of route ``name`` (``RouteNameError`` if the name is invalid)."""
    return f"/r/{check_route_name(name)}{UPSTREAM_PATH}"


class Route:
    """One route's faults, the bookkeeping of their self-healing ``count``, its stats and RNG."""

    def __init__(self, name: str, faults: SimFaults, rng: random.Random) -> None:
        self.name = name
        self._faults = faults
        self.faulted_with_current = 0  # requests faulted since the faults were last replaced
        self.stats = SimStats()
        self.rng = rng

    @property
    def faults(self) -> SimFaults:
        """The faults in force on this route."""
        return self._faults

    @faults.setter
    def faults(self, faults: SimFaults) -> None:
        self._faults = faults
        self.faulted_with_current = 0

    def take_fault(self) -> None:
        """Count one faulted request against ``count``; heal once it is used up."""
        self.faulted_with_current += 1
        if self._faults.count is not None and self.faulted_with_current >= self._faults.count:
            self.faults = SimFaults()


class RouteTable:
    """The routes in use, created on first use up to ``limit`` (the default route included).

    The bound keeps a client that invents names from growing memory without end;
    routes are never forgotten, so a name once served keeps answering.
    """

    def __init__(self, faults: SimFaults, *, seed: int | None, limit: int) -> None:
        self.limit = limit
        self._seed = seed
        # The default route draws from Random(seed) as the simulator always did.
        self.default = Route(DEFAULT_ROUTE, faults, random.Random(seed))
        self._routes: dict[str, Route] = {DEFAULT_ROUTE: self.default}

    def get(self, name: str) -> Route:
        """Route ``name``, created healthy on first use; ``RouteNameError``/``RouteLimitError``."""
        route = self._routes.get(name)
        if route is not None:
            return route
        check_route_name(name)
        if len(self._routes) >= self.limit:
            raise RouteLimitError(f"unknown route {name!r}: the simulator serves at most {self.limit} routes")
        # Its own RNG, seeded from the name, so a route's seeded draws do not depend on
        # how much traffic the other routes get.
        rng = random.Random() if self._seed is None else random.Random(f"{self._seed}/{name}")
        route = self._routes[name] = Route(name, SimFaults(), rng)
        return route

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def __len__(self) -> int:
        return len(self._routes)
