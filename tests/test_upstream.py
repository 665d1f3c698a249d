"""gateway.upstream: the answer scope, through UpstreamService's public interface, against the simulator.

The service is built from real parts (routes made by ``make_route``, a limiter, a retry
budget, metrics) in front of a real simulator on loopback; the route pool draws from a
seeded RNG with route ``a`` weighted far above the others, so ``a`` is always tried first.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from opentelemetry.trace import NoOpTracer, Span

from gateway.app import make_route
from gateway.cutter import Cutter
from gateway.errors import (
    CircuitOpenError,
    OverloadedError,
    UpstreamInterruptedError,
    UpstreamNotWorkingError,
    UpstreamRejectedError,
    UpstreamStatusError,
)
from gateway.flowgpt.client import ChatPrompt
from gateway.flowgpt.protocol import DEFAULT_MODEL, Message
from gateway.limiter import ConcurrencyLimiter
from gateway.metrics import Metrics
from gateway.retry import RetryBudget, RetryPolicy
from gateway.route_pool import RoutePool
from gateway.simulator import SimFaults, Simulator, expected_answer
from gateway.tracing import Tracing
from gateway.upstream import Timeouts, UpstreamService
from tests.gateway_support import make_settings, read_all

PROMPT = ChatPrompt(model=DEFAULT_MODEL, messages=[Message("user", "Hello")])
ANSWER = expected_answer(DEFAULT_MODEL, "Hello")
# Route weights: the seeded pick takes "a" first; the others are the fallbacks.
WEIGHTS = {"a": 1000.0, "b": 0.001}


@dataclass
class Rig:
    """A service and the parts a test observes it through."""

    service: UpstreamService
    pool: RoutePool
    limiter: ConcurrencyLimiter
    metrics: Metrics

    def sample(self, name: str, **labels: str) -> float:
        """One series' value read through the registry (0 when it does not exist)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def upstream(self, name: str, route: str, **labels: str) -> float:
        """A per-route upstream series of the flowgpt provider."""
        return self.sample(name, provider="flowgpt", route=route, **labels)


RigFactory = Callable[..., Rig]


async def answer_fails(rig: Rig) -> None:
    """Open an answer scope that must raise before it yields an answer."""
    async with rig.service.answer(PROMPT):
        pytest.fail("the call must fail before an answer is yielded")


@pytest.fixture(name="make_rig")
async def make_rig_fixture(sim: Simulator) -> AsyncIterator[RigFactory]:
    """Build services in front of the simulator's routes; their breakers' timers are stopped at the end."""
    pools: list[RoutePool] = []
    async with aiohttp.ClientSession() as session:

        def factory(
            *routes: str,
            slots: int = 4,
            retry_max: int = 2,
            budget_ratio: float = 0.2,
            budget_min: int = 10,
            tracing: Tracing | None = None,
        ) -> Rig:
            upstreams = [{"name": name, "url": sim.route_url(name), "weight": WEIGHTS[name]} for name in routes]
            settings = make_settings(sim.url, upstreams=json.dumps(upstreams), breaker_fail_max=3)
            metrics = Metrics(routes=routes)
            pool = RoutePool(
                [make_route(session, spec, settings, metrics) for spec in settings.routes()], rng=random.Random(0)
            )
            pools.append(pool)
            limiter = ConcurrencyLimiter(slots, queue_timeout=0)
            service = UpstreamService(
                pool,
                limiter=limiter,
                budget=RetryBudget(ratio=budget_ratio, minimum=budget_min, clock=time.monotonic),
                metrics=metrics,
                timeouts=Timeouts(first_token=2.0, idle=2.0, total=5.0),
                retry=RetryPolicy(max_retries=retry_max, backoff_base=0.001, backoff_max=0.005),
                tracing=tracing,
            )
            return Rig(service, pool, limiter, metrics)

        yield factory
    for pool in pools:
        for route in pool:
            route.breaker.stop()


async def test_an_answer_streams_the_whole_text_and_records_the_success(make_rig: RigFactory) -> None:
    """A healthy route: the whole answer, one attempt with its first token timed, nothing held afterwards."""
    rig = make_rig("a")
    async with rig.service.answer(PROMPT) as answer:
        assert rig.limiter.in_use == 1
        assert await read_all(answer) == ANSWER
    assert answer.completed
    assert answer.error is None
    assert rig.limiter.in_use == 0
    assert rig.pool["a"].inflight == 0
    assert rig.upstream("gateway_inflight_requests", "a") == 0
    assert rig.upstream("gateway_upstream_requests_total", "a") == 1
    assert rig.upstream("gateway_upstream_first_token_seconds_count", "a") == 1
    assert rig.upstream("gateway_upstream_request_duration_seconds_count", "a") == 1
    assert rig.pool["a"].breaker.state == "closed"


@pytest.mark.parametrize(
    ("close_route", "error", "reason"),
    [
        pytest.param(
            lambda route: route.flag.set_mode("not_working"), UpstreamNotWorkingError, "not_working", id="flag"
        ),
        pytest.param(lambda route: route.breaker.force_open(), CircuitOpenError, "breaker_open", id="breaker"),
    ],
)
async def test_refuse_early_refuses_when_no_route_admits(
    make_rig: RigFactory, sim: Simulator, close_route: Callable[..., None], error: type[Exception], reason: str
) -> None:
    """refuse_early and answer raise the route's refusal, count its reason, and send nothing upstream."""
    rig = make_rig("a")
    rig.service.refuse_early()  # admitted while the route is open for calls
    close_route(rig.pool["a"])
    with pytest.raises(error):
        rig.service.refuse_early()
    with pytest.raises(error):
        await answer_fails(rig)
    assert rig.sample("gateway_admission_rejections_total", provider="flowgpt", reason=reason) == 2
    assert sim.stats.requests_total == 0
    assert rig.limiter.in_use == 0


async def test_a_failure_before_the_first_token_fails_over_to_another_route(
    make_rig: RigFactory, sim: Simulator
) -> None:
    """Route a answers 503: the call moves to b, counted as a failover from a and as a's failure."""
    sim.set_faults(SimFaults(http_status=503), route="a")
    rig = make_rig("a", "b")
    async with rig.service.answer(PROMPT) as answer:
        assert answer.route.name == "b"
        assert await read_all(answer) == ANSWER
    assert rig.sample("gateway_failovers_total", from_route="a") == 1
    assert rig.sample("gateway_route_selected_total", route="a") == 1
    assert rig.sample("gateway_route_selected_total", route="b") == 1
    assert rig.upstream("gateway_upstream_errors_total", "a", kind="http_status") == 1
    assert rig.upstream("gateway_upstream_retries_total", "a") == 0
    assert rig.pool["a"].breaker.consecutive_failures == 1
    assert (sim.route_stats("a").requests_total, sim.route_stats("b").requests_total) == (1, 1)
    assert rig.limiter.in_use == 0


async def test_a_single_route_is_retried_before_the_first_token(make_rig: RigFactory, sim: Simulator) -> None:
    """One route fails once with a 503: the retry on the same route answers, counted as one retry."""
    sim.set_faults(SimFaults(http_status=503, count=1), route="a")
    rig = make_rig("a")
    async with rig.service.answer(PROMPT) as answer:
        assert await read_all(answer) == ANSWER
    assert rig.upstream("gateway_upstream_retries_total", "a") == 1
    assert rig.upstream("gateway_upstream_requests_total", "a") == 2
    assert sim.route_stats("a").requests_total == 2


async def test_retries_stop_at_retry_max(make_rig: RigFactory, sim: Simulator) -> None:
    """A route that keeps failing gets 1 + retry_max attempts, then the caller gets the last error."""
    sim.set_faults(SimFaults(http_status=503), route="a")
    rig = make_rig("a", retry_max=2)
    with pytest.raises(UpstreamStatusError):
        await answer_fails(rig)
    assert sim.route_stats("a").requests_total == 3
    assert rig.upstream("gateway_upstream_retries_total", "a") == 2
    assert rig.limiter.in_use == 0


async def test_an_exhausted_retry_budget_allows_no_retry(make_rig: RigFactory, sim: Simulator) -> None:
    """With a budget of zero retries the first failure goes back to the caller, after one attempt."""
    sim.set_faults(SimFaults(http_status=503), route="a")
    rig = make_rig("a", budget_ratio=0.0, budget_min=0)
    with pytest.raises(UpstreamStatusError) as info:
        await answer_fails(rig)
    assert info.value.kind == "http_status"
    assert sim.route_stats("a").requests_total == 1
    assert rig.upstream("gateway_upstream_retries_total", "a") == 0
    assert rig.limiter.in_use == 0


async def test_a_rejection_is_neither_retried_nor_failed_over(make_rig: RigFactory, sim: Simulator) -> None:
    """An upstream 400 for this request goes straight back: no other route, no retry, no breaker failure."""
    sim.set_faults(SimFaults(reject_marker="Hello"), route="a")
    rig = make_rig("a", "b")
    with pytest.raises(UpstreamRejectedError):
        await answer_fails(rig)
    assert (sim.route_stats("a").requests_total, sim.route_stats("b").requests_total) == (1, 0)
    assert rig.upstream("gateway_upstream_errors_total", "a", kind="rejected") == 1
    assert rig.pool["a"].breaker.consecutive_failures == 0
    assert rig.limiter.in_use == 0


async def test_a_stream_cut_after_the_first_token_is_settled_as_the_routes_failure(
    make_rig: RigFactory, sim: Simulator
) -> None:
    """The caller sees the interruption; leaving the scope counts it against the route, with no retry."""
    sim.set_faults(SimFaults(reset_after=2), route="a")
    rig = make_rig("a", "b")
    with pytest.raises(UpstreamInterruptedError):
        async with rig.service.answer(PROMPT) as answer:
            await read_all(answer)
    assert isinstance(answer.error, UpstreamInterruptedError)
    assert not answer.completed
    assert rig.upstream("gateway_upstream_errors_total", "a", kind="interrupted") == 1
    assert rig.pool["a"].breaker.consecutive_failures == 1
    assert (sim.route_stats("a").requests_total, sim.route_stats("b").requests_total) == (1, 0)
    assert rig.upstream("gateway_inflight_requests", "a") == 0
    assert rig.limiter.in_use == 0


async def test_the_slot_is_held_for_the_scope_and_released_after(make_rig: RigFactory) -> None:
    """With one slot, a second call during an answer is refused as overloaded; after the scope it is admitted."""
    rig = make_rig("a", slots=1)
    async with rig.service.answer(PROMPT) as answer:
        with pytest.raises(OverloadedError):
            await answer_fails(rig)
        await read_all(answer)
    assert rig.sample("gateway_admission_rejections_total", provider="flowgpt", reason="overloaded") == 1
    async with rig.service.answer(PROMPT) as again:
        assert await read_all(again) == ANSWER
    assert rig.limiter.in_use == 0


class _BrokenTracer(NoOpTracer):
    """A sampler or span processor with a bug: starting a span raises."""

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        raise RuntimeError("span processor bug")


def _half_open(rig: Rig) -> None:
    breaker = rig.pool["a"].breaker
    breaker.trip(30.0, 30.0)  # a peer opened the route ...
    breaker.probe_recovered()  # ... and a probe passed: half-open now, no clock to wait on (arrow b3)
    assert breaker.state == "half_open"


def _boom() -> Cutter:
    raise RuntimeError("cutter factory bug")


async def test_a_failure_before_the_attempt_runs_holds_nothing(make_rig: RigFactory) -> None:
    """A cutter factory or a span that fails to start leaves no ticket, trial slot or in-flight count behind.

    One leaked half-open trial slot refuses every caller (half_open_busy) until an operator steps in.
    """
    broken = Tracing(endpoint=None)
    broken.enabled, broken.tracer = True, _BrokenTracer()
    for rig, whole in ((make_rig("a"), _boom), (make_rig("a", tracing=broken), None)):
        _half_open(rig)
        route = rig.pool["a"]
        with pytest.raises(RuntimeError):
            async with rig.service.answer(PROMPT, whole=whole):
                pass
        assert (route.inflight, route.breaker.trials_running, rig.limiter.in_use) == (0, 0, 0)
        assert rig.upstream("gateway_inflight_requests", "a") == 0
        assert route.breaker.decision().admitted  # the next caller gets the trial
