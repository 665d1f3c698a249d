"""The status page's memory: the fixed-size ring, the sampler's windows, sparklines and quantiles, its bound."""

from __future__ import annotations

import asyncio
import logging
import math
import tracemalloc

import pytest

from gateway.metrics import Metrics
from gateway.route_config import MAX_ROUTES
from gateway.status_page import ring as ring_module
from gateway.status_page.ring import Ring
from gateway.status_page.sampler import BUCKETS, SLOTS, Sampler, memory_bound, quantile
from monitoring.processes import eventually
from tests.clock_support import FakeClock

HOUR_OF_SAMPLES = 3600 // 5  # the default interval is 5 s


def test_ring_keeps_the_newest_rows_and_never_grows() -> None:
    """Past its capacity the ring drops the oldest rows; its length stops at the slot count and its bytes never change."""
    ring = Ring(slots=3, width=2)
    size = ring.nbytes()
    for value in range(5):
        ring.push([value, value * 10])
        assert ring.nbytes() == size
    assert len(ring) == 3
    assert [list(row) for row in ring.rows()] == [[2, 20], [3, 30], [4, 40]]
    assert ring.column(1) == [20, 30, 40]
    with pytest.raises(IndexError):
        ring.row(3)


def test_ring_refuses_a_row_of_the_wrong_width() -> None:
    """A row that does not match the ring's width is an error, not a silent misalignment."""
    ring = Ring(slots=2, width=2)
    with pytest.raises(ValueError, match="width 2"):
        ring.push([1.0])


@pytest.mark.parametrize(
    ("observations", "q", "expected"),
    [
        ([0.3] * 100, 0.5, 0.25),  # all in (0.2, 0.3]: interpolated to the bucket's middle
        ([0.005] * 50 + [0.9] * 50, 0.95, 0.975),  # the tail bucket (0.75, 1]
        ([120.0] * 10, 0.5, 60.0),  # the +Inf bucket answers the largest finite bound
    ],
)
def test_quantiles_follow_histogram_quantile(observations: list[float], q: float, expected: float) -> None:
    """Quantiles from cumulative bucket counts interpolate linearly inside a bucket, as Prometheus does."""
    counts = [float(sum(1 for o in observations if o <= bound)) for bound in BUCKETS]
    estimate = quantile(q, counts)
    assert estimate is not None
    assert math.isclose(estimate, expected, rel_tol=1e-9)


def test_no_observations_have_no_quantile() -> None:
    """An empty window has no latency to show, rather than a zero."""
    assert quantile(0.5, [0.0] * len(BUCKETS)) is None


def test_windows_count_only_the_last_five_minutes() -> None:
    """Requests, failures and first-token quantiles cover the last 300 s: older traffic drops out of the window."""
    clock = FakeClock()
    metrics = Metrics(routes=("a", "b"))
    sampler = Sampler(metrics, interval=5, clock=clock)
    a = metrics.routes["a"]
    sampler.sample()
    for _ in range(7):  # old traffic, soon out of the window
        a.upstream_requests.inc()
        a.first_token.observe(2.5)
    for _ in range(60):  # five minutes of samples
        clock.advance(5)
        sampler.sample()
    for _ in range(3):  # recent traffic
        a.upstream_requests.inc()
        a.upstream_errors["timeout"].inc()
        a.first_token.observe(0.04)
    a.upstream_errors["rejected"].inc()  # a caller's bad request is not a route failure
    clock.advance(2)
    length, shared, routes = sampler.window(300)
    assert length == 297  # the oldest sample within 300 s: taken at 1005, 297 s before now
    assert (routes["a"].requests, routes["a"].failures) == (3, 3)
    assert routes["a"].p50 == pytest.approx(0.0375)  # (0.025, 0.05]: all three, halfway
    assert (routes["b"].requests, routes["b"].p50) == (0, None)
    assert shared == dict.fromkeys(
        ("breaker_open", "half_open_busy", "not_working", "overloaded", "retries", "failovers"), 0
    ) | dict.fromkeys(("2xx", "4xx", "5xx", "stream_errors"), 0)


def test_window_before_the_first_sample_is_empty() -> None:
    """Without a sample there is no baseline: the window is empty, not everything since start-up."""
    metrics = Metrics(routes=("a",))
    metrics.routes["a"].upstream_requests.inc(5)
    length, _, routes = Sampler(metrics, interval=5, clock=FakeClock()).window(300)
    assert (length, routes) == (0.0, {})


def test_sparklines_are_rates_per_step() -> None:
    """Each step's point is the counter's increase divided by the time between samples; no traffic, no latency."""
    clock = FakeClock()
    metrics = Metrics(routes=("a",))
    a = metrics.routes["a"]
    sampler = Sampler(metrics, interval=5, clock=clock)
    sampler.sample()
    a.upstream_requests.inc(10)
    a.upstream_errors["connect"].inc(5)
    a.first_token.observe(0.3)
    clock.advance(5)
    sampler.sample()
    clock.advance(5)
    sampler.sample()
    spark = sampler.spark("a")
    assert spark.requests == [2.0, 0.0]
    assert spark.failures == [1.0, 0.0]
    assert spark.first_token == [pytest.approx(0.25), None]


def test_rejections_and_retries_are_windowed() -> None:
    """Admission rejections by reason and retries of every route count within the window."""
    clock = FakeClock()
    metrics = Metrics(routes=("a", "b"))
    sampler = Sampler(metrics, interval=5, clock=clock)
    sampler.sample()
    metrics.rejections["overloaded"].inc(4)
    metrics.routes["a"].retries.inc()
    metrics.routes["b"].retries.inc(2)
    clock.advance(5)
    _, shared, _ = sampler.window(300)
    assert (shared["overloaded"], shared["breaker_open"], shared["retries"]) == (4, 0, 3)


def test_an_hour_of_samples_stays_within_the_stated_bound() -> None:
    """Routes sampled for an hour (injected clock): ring lengths stop at SLOTS and ring memory stays at the bound."""
    routes = tuple(f"r{i}" for i in range(8))  # the bound is per route; 64 routes only make the test slower
    metrics = Metrics(routes=routes)
    clock = FakeClock()
    tracemalloc.start()
    try:
        sampler = Sampler(metrics, interval=5, clock=clock)
        ring_filter = [tracemalloc.Filter(True, ring_module.__file__)]

        def ring_allocations() -> int:
            snapshot = tracemalloc.take_snapshot().filter_traces(ring_filter)
            return sum(stat.size for stat in snapshot.statistics("filename"))

        allocated = ring_allocations()
        for step in range(HOUR_OF_SAMPLES):
            route = metrics.routes[routes[step % len(routes)]]
            route.upstream_requests.inc()
            route.first_token.observe(0.1 * (step % 7))
            sampler.sample()
            clock.advance(5)
            assert max(sampler.lengths()) <= SLOTS
        after_an_hour = ring_allocations()
    finally:
        tracemalloc.stop()
    assert sampler.lengths() == [SLOTS] * (len(routes) + 1)
    assert sampler.nbytes() == memory_bound(len(routes))
    assert allocated <= memory_bound(len(routes))
    assert after_an_hour <= allocated  # nothing allocated in the rings after start-up


def test_the_bound_for_the_most_routes_allowed() -> None:
    """With the 64 routes the gateway allows, the rings hold what memory_bound states, under 2.8 MB."""
    sampler = Sampler(Metrics(routes=tuple(f"r{i}" for i in range(MAX_ROUTES))), interval=5, clock=FakeClock())
    assert sampler.nbytes() == memory_bound(MAX_ROUTES) == 2_713_296


async def test_the_sampling_loop_survives_a_failing_sample(caplog: pytest.LogCaptureFixture) -> None:
    """A sample that raises is logged and the loop keeps sampling."""
    sampler = Sampler(Metrics(routes=("a",)), interval=0.001)
    calls = 0
    real_sample = sampler.sample

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a broken reading")
        real_sample()

    sampler.sample = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="gateway.status_page.sampler"):
        task = asyncio.create_task(sampler.run())
        try:
            await eventually(lambda: calls >= 3)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert "status page sample failed" in caplog.text
    assert sampler.lengths()[0] >= 2
