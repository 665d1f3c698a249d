"""Samples the gateway's own counters into fixed-size rings, for windows and sparklines.

Every ``interval`` seconds the sampler reads, from the prometheus_client objects the
gateway already updates (no /metrics parsing), each route's cumulative upstream
requests, upstream failures and first-token histogram buckets, plus the admission
rejections by reason and the retries. "Last 5 minutes" is the difference between a
live reading and the oldest sample within 5 minutes; quantiles are estimated from
bucket differences the way Prometheus' ``histogram_quantile`` does.

Each sample also stores the step's rates and first-token median next to the counters,
so drawing the sparklines reads columns instead of re-estimating 180 quantiles per route.

Each route row also keeps what the page says about the route over the window: failovers away
from it, client errors it caused, and (from :class:`gateway.timeline.Timeline`) its downtime and
flaps; the shared row keeps what clients received (chat answers by status class, stream errors).

Memory bound: :data:`SLOTS` rows per ring, allocated at start-up and never grown.
A route's ring holds ``SLOTS x ROUTE_WIDTH`` doubles (181 x 29 x 8 B = 41,992 B, about
41 KiB), the shared ring ``SLOTS x GLOBAL_WIDTH`` (181 x 11 x 8 B, about 15.6 KiB); so
with the array and object headers, 2,713,296 bytes (2.7 MB) for the 64 routes the gateway
allows (:func:`memory_bound`, checked by ``tests/test_status_page_sampler.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.errors import UPSTREAM_ERROR_KINDS
from gateway.metrics import ADMISSION_REASONS, ANSWER_CLASSES, CHAT_ROUTE
from gateway.route_metrics import FIRST_TOKEN_BUCKETS
from gateway.status_page.ring import Ring, ring_bytes

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase

    from gateway.metrics import Metrics
    from gateway.route_metrics import RouteMetrics
    from gateway.timeline import RouteClock

log = logging.getLogger(__name__)

SLOTS: Final = 181  # 180 steps: 15 minutes at the default 5 s interval
WINDOW_SECONDS: Final = 300.0  # "last 5 minutes", or what the rings hold at a shorter step
BUCKETS: Final = (*FIRST_TOKEN_BUCKETS, float("inf"))
# A route row: requests, failures, the cumulative first-token bucket counts (+Inf last), then
# the step since the previous row: requests/s, failures/s, first-token p50 (NaN when unknown).
COUNTERS: Final = 2 + len(BUCKETS)
STEP_COLUMNS: Final = 3
# After the step: failovers away, client errors caused, seconds down, times gone down (all cumulative).
ROUTE_EXTRAS: Final = ("failovers", "client_errors", "downtime", "flaps")
ROUTE_WIDTH: Final = COUNTERS + STEP_COLUMNS + len(ROUTE_EXTRAS)
# The shared row: monotonic time, rejections by reason, retries of every route, failovers of every
# route, then chat answers by status class and streams ended by an error event.
SHARED_KEYS: Final = (*ADMISSION_REASONS, "retries", "failovers", *ANSWER_CLASSES, "stream_errors")
GLOBAL_WIDTH: Final = 1 + len(SHARED_KEYS)
# "rejected" is the upstream refusing one request (a caller's fault), not a failure of the route; nor
# is "deadline" (a metric label only, not an error kind): an answer cut by its own total deadline.
FAILURE_KINDS: Final = tuple(kind for kind in UPSTREAM_ERROR_KINDS if kind != "rejected")


def memory_bound(routes: int) -> int:
    """Bytes every ring of a sampler with ``routes`` routes holds, for its whole life."""
    return ring_bytes(slots=SLOTS, width=GLOBAL_WIDTH) + routes * ring_bytes(slots=SLOTS, width=ROUTE_WIDTH)


def _value(child: MetricWrapperBase) -> float:
    """A counter child's total, through the public collector interface."""
    for family in child.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0


def _buckets(child: MetricWrapperBase) -> list[float]:
    """A histogram child's cumulative bucket counts, smallest bound first (+Inf last)."""
    return [float(s.value) for family in child.collect() for s in family.samples if s.name.endswith("_bucket")]


def read_route(metrics: RouteMetrics) -> list[float]:
    """One route's counters, read now."""
    failures = sum(_value(metrics.upstream_errors[kind]) for kind in FAILURE_KINDS)
    return [_value(metrics.upstream_requests), failures, *_buckets(metrics.first_token)]


def read_extras(metrics: RouteMetrics, clock: RouteClock | None) -> list[float]:
    """One route's :data:`ROUTE_EXTRAS`, read now (no clock: a route not yet watched, never down)."""
    down, flaps = (0.0, 0.0) if clock is None else (clock.downtime(), float(clock.flaps))
    return [_value(metrics.failovers), _value(metrics.client_errors), down, flaps]


def quantile(q: float, counts: Sequence[float]) -> float | None:
    """The ``q`` quantile of cumulative first-token bucket counts, interpolated within a bucket; None if empty.

    As in Prometheus, a rank in the +Inf bucket answers the largest finite bound.
    """
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    for index, count in enumerate(counts):
        if count >= rank:
            if index == len(BUCKETS) - 1:
                return BUCKETS[-2]
            lower = BUCKETS[index - 1] if index else 0.0
            below = counts[index - 1] if index else 0.0
            inside = count - below
            return BUCKETS[index] if inside <= 0 else lower + (BUCKETS[index] - lower) * (rank - below) / inside
    return BUCKETS[-2]


def _step(ring: Ring, counters: Sequence[float], elapsed: float) -> tuple[float, float, float]:
    """Requests/s, failures/s and first-token p50 since the ring's newest row; NaN for the first row."""
    if not len(ring) or elapsed <= 0:
        return math.nan, math.nan, math.nan
    before = ring.row(len(ring) - 1)
    median = quantile(0.5, [max(0.0, counters[i] - before[i]) for i in range(2, COUNTERS)])
    return (
        max(0.0, counters[0] - before[0]) / elapsed,
        max(0.0, counters[1] - before[1]) / elapsed,
        math.nan if median is None else median,
    )


def _known(values: list[float]) -> list[float | None]:
    return [None if math.isnan(value) else value for value in values]


@dataclass(frozen=True, slots=True)
class RouteWindow:
    """A route's traffic over a window: requests, failures and first-token p50/p95 (None without data)."""

    requests: float
    failures: float
    p50: float | None
    p95: float | None
    failovers: float = 0.0
    client_errors: float = 0.0
    downtime: float = 0.0
    flaps: float = 0.0


@dataclass(frozen=True, slots=True)
class Spark:
    """Per-step series, oldest first: requests/s, failures/s, first-token p50 (None where unknown)."""

    step: float
    requests: list[float | None]
    failures: list[float | None]
    first_token: list[float | None]


class Sampler:
    """The rings and the loop that fills them; reading windows costs one live reading, no allocation in the rings."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        route_clocks: dict[str, RouteClock] | None = None,
    ) -> None:
        self.interval = interval
        self._metrics = metrics
        self._route_clocks = route_clocks if route_clocks is not None else {}
        self._clock = clock
        self._shared = Ring(slots=SLOTS, width=GLOBAL_WIDTH)
        self._routes = {name: Ring(slots=SLOTS, width=ROUTE_WIDTH) for name in metrics.routes}

    def _shared_row(self, now: float) -> list[float]:
        m = self._metrics
        retries = sum(_value(route.retries) for route in m.routes.values())
        failovers = sum(_value(route.failovers) for route in m.routes.values())
        answers = m.answers_by_class(CHAT_ROUTE)
        stream_errors = _value(m.stream_outcomes["error"])
        rejections = (_value(m.rejections[reason]) for reason in ADMISSION_REASONS)
        return [now, *rejections, retries, failovers, *(answers[key] for key in ANSWER_CLASSES), stream_errors]

    def _route_row(self, name: str) -> tuple[list[float], list[float]]:
        metrics = self._metrics.routes[name]
        return read_route(metrics), read_extras(metrics, self._route_clocks.get(name))

    def sample(self) -> None:
        """Append one row to every ring (all read first, so the rings stay aligned if a reading fails)."""
        now = self._clock()
        shared = self._shared_row(now)
        elapsed = now - self._shared.row(len(self._shared) - 1)[0] if len(self._shared) else 0.0
        rows = []
        for name, ring in self._routes.items():
            counters, extras = self._route_row(name)
            rows.append((ring, [*counters, *_step(ring, counters, elapsed), *extras]))
        self._shared.push(shared)
        for ring, row in rows:
            ring.push(row)

    def _baseline(self, seconds: float, now: float) -> int | None:
        """Index of the oldest sample no older than ``seconds``, if any (the window falls short by under a step)."""
        limit = now - seconds
        for index in range(len(self._shared)):
            if self._shared.row(index)[0] >= limit:
                return index
        return None

    def window(self, seconds: float) -> tuple[float, dict[str, float], dict[str, RouteWindow]]:
        """Over the last ``seconds`` (or what history there is): its length, rejections and retries, each route."""
        now = self._clock()
        live = self._shared_row(now)
        start = self._baseline(seconds, now)
        if start is None:  # no sample yet: an empty window rather than counts since start-up
            return 0.0, dict.fromkeys(SHARED_KEYS, 0.0), {}
        base = self._shared.row(start)
        totals = {key: max(0.0, live[i + 1] - base[i + 1]) for i, key in enumerate(SHARED_KEYS)}
        routes = {}
        for name, ring in self._routes.items():
            then = ring.row(start)
            current, extras = self._route_row(name)
            counts = [max(0.0, current[i] - then[i]) for i in range(2, COUNTERS)]
            first_extra = COUNTERS + STEP_COLUMNS
            more = {key: max(0.0, extras[i] - then[first_extra + i]) for i, key in enumerate(ROUTE_EXTRAS)}
            routes[name] = RouteWindow(
                requests=max(0.0, current[0] - then[0]),
                failures=max(0.0, current[1] - then[1]),
                p50=quantile(0.5, counts),
                p95=quantile(0.95, counts),
                **more,
            )
        return now - base[0], totals, routes

    def spark(self, route: str) -> Spark:
        """The route's per-step series over the whole ring (at most ``SLOTS - 1`` steps)."""
        ring = self._routes[route]
        requests, failures, first_token = (_known(ring.column(COUNTERS + i)[1:]) for i in range(3))
        return Spark(step=self.interval, requests=requests, failures=failures, first_token=first_token)

    def nbytes(self) -> int:
        """What the rings hold (constant from start-up)."""
        return self._shared.nbytes() + sum(ring.nbytes() for ring in self._routes.values())

    def lengths(self) -> list[int]:
        """Rows held by each ring (never above :data:`SLOTS`)."""
        return [len(self._shared), *(len(ring) for ring in self._routes.values())]

    async def run(self) -> None:
        """Sample now and every ``interval`` seconds until cancelled; a failed sample is logged and skipped."""
        while True:
            try:
                self.sample()
            except Exception:  # the page must not lose its history to one bad reading
                log.exception("status page sample failed")
            await asyncio.sleep(self.interval)
