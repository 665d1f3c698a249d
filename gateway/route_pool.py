"""The routes at run time and how a call picks one.

A route is one way to reach FlowGpt with its own client (URL, token, proxy), breaker,
working flag and prober. Picking looks only at local state (no I/O, no lock): among
the routes that admit a call now (working, breaker closed, or half-open with its trial
free), draw two by weight and take the one with fewer calls in flight (power of two
choices). A single route skips the draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.errors import AdmissionError, CircuitOpenError, retry_after_seconds
from gateway.health import Health, query
from gateway.scope import Scopes

if TYPE_CHECKING:
    from gateway.breaker import CircuitBreaker
    from gateway.events import EventBus
    from gateway.flowgpt.client import FlowGptClient
    from gateway.probe import Prober
    from gateway.probe_lease import ProbeLease
    from gateway.route_metrics import RouteMetrics
    from gateway.working import WorkingFlag


@dataclass(eq=False)
class Route:
    """One way to reach FlowGpt and everything that judges it."""

    name: str
    weight: float
    client: FlowGptClient
    breaker: CircuitBreaker
    flag: WorkingFlag
    prober: Prober
    lease: ProbeLease  # whether this process runs the prober's next probe (the fleet keeps it)
    events: EventBus
    metrics: RouteMetrics
    scopes: Scopes  # what its fleet state is shared with
    inflight: int = field(default=0)

    def health(self, model: str | None = None) -> Health:
        """The route's health for ``model`` (None: any) now: the one record every consumer reads; changes nothing."""
        return query(self.flag, self.breaker, model)

    def refusal(self, model: str | None = None) -> AdmissionError | None:
        """Why this route would refuse a call for ``model`` now (working flag first), or None when it admits one.

        ``health(model).refusal`` from one breaker decision, without building the record: every
        refused request asks it (the breaker-open path runs by the thousand per second).
        """
        decision = self.breaker.decision(model)
        if decision.admitted and self.flag.working:
            return None
        return self.flag.admission_error() or decision.error

    def admits(self, model: str | None = None) -> bool:
        """``health(model).admits`` without building the record: the pick asks it of every route per request.

        The same two reads as :attr:`gateway.health.Health.admits`; building the whole record costs
        several times more (timeit numbers in the commit that introduced it).
        """
        return self.flag.working and self.breaker.decision(model).admitted


class RoutePool:
    """The configured routes, in configuration order."""

    def __init__(self, routes: Sequence[Route], *, rng: random.Random | None = None) -> None:
        if not routes:
            raise ValueError("at least one route")
        self._routes = tuple(routes)
        self._by_name = {route.name: route for route in self._routes}
        self._rng = rng or random.Random()

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def __getitem__(self, name: str) -> Route:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def pick(self, exclude: frozenset[str] | set[str] = frozenset(), model: str | None = None) -> Route | None:
        """A route that admits a call for ``model`` now and is not in ``exclude``, or None."""
        if len(self._routes) == 1:
            only = self._routes[0]
            return only if only.name not in exclude and only.admits(model) else None
        candidates = [route for route in self._routes if route.name not in exclude and route.admits(model)]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        first, second = self._rng.choices(candidates, weights=[route.weight for route in candidates], k=2)
        # Load relative to weight (a route of weight 9 may carry nine times the calls); ties keep the
        # first draw, so an idle pool follows the weights exactly.
        return second if second.inflight * first.weight < first.inflight * second.weight else first

    def any_admits(self, exclude: frozenset[str] | set[str] = frozenset(), model: str | None = None) -> bool:
        """Whether some route outside ``exclude`` would take a call for ``model`` now."""
        return any(route.name not in exclude and route.admits(model) for route in self._routes)

    def refusal(self, model: str | None = None) -> AdmissionError | None:
        """None when some route admits a call for ``model`` now, else the refusal: ``upstream_not_working``
        if no route works, else the breakers'. One decision per route, stopping at the first that admits.

        Retry-After is the earliest of any route's, whichever kind of refusal it comes from.
        """
        # One pass, no lists: during an outage every request asks this. A breaker's refusal ranks before
        # a flag's (a route that works refuses by its breaker, so the flag's is chosen only when no route
        # works), then the soonest Retry-After; the first such wins a tie.
        chosen: AdmissionError | None = None
        chosen_after = earliest = math.inf
        for route in self._routes:
            error = route.refusal(model)
            if error is None:
                return None
            after = _retry_after(error)
            earliest = min(earliest, after)
            if chosen is None or _ranks_before(error, after, chosen, chosen_after):
                chosen, chosen_after = error, after
        assert chosen is not None  # the pool has a route
        return _agreeing(chosen, earliest)

    def working(self) -> bool:
        """Whether at least one route's working flag is on."""
        return any(route.health().working for route in self._routes)


def come_back() -> CircuitOpenError:
    """The refusal when a route admitted again while the caller looked: retry at once."""
    return CircuitOpenError(f"no route admitted the call; retry in {retry_after_seconds(0.0)} s", retry_after=0.0)


def _agreeing(error: AdmissionError, retry_after: float) -> AdmissionError:
    """``error`` with ``retry_after``, its message's "retry in N s" saying the same whole seconds as the header.

    The chosen refusal may be one route's while the earliest Retry-After is another's.
    """
    error.retry_after = retry_after
    reason, _, _ = error.message.partition("; retry in ")
    error.message = f"{reason}; retry in {retry_after_seconds(retry_after)} s"
    error.args = (error.message,)
    return error


def _ranks_before(error: AdmissionError, after: float, chosen: AdmissionError, chosen_after: float) -> bool:
    """Whether ``error`` is the better refusal to give: a breaker's before a flag's, then the sooner Retry-After."""
    circuit, chosen_circuit = isinstance(error, CircuitOpenError), isinstance(chosen, CircuitOpenError)
    return (circuit and not chosen_circuit) or (circuit == chosen_circuit and after < chosen_after)


def _retry_after(error: AdmissionError) -> float:
    return error.retry_after if error.retry_after is not None else 0.0
