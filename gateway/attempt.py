"""One upstream attempt on one route, from its admission to its settlement.

An :class:`Attempt` owns everything that one call holds on its route: the breaker ticket,
the route's in-flight count, the attempt's metrics and its trace span, and the stream once it
is open. :meth:`Attempt.settle` is the one place an attempt ends: it asks
:func:`gateway.outcome.classify` once what the end means, closes the stream, gives the count
back, tells the breaker, writes the metrics and ends the span. The policy in
:mod:`gateway.upstream` only reads the :class:`Outcome` it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.errors import UpstreamError
from gateway.outcome import Outcome, classify
from gateway.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.breaker_state import Ticket
    from gateway.flowgpt.client import FlowGptStream
    from gateway.route_pool import Route


class Attempt:
    """One call on ``route`` under ``ticket``; settle it exactly once, whatever happens."""

    __slots__ = ("_clock", "outcome", "route", "span", "started", "stream", "ticket")

    def __init__(self, route: Route, ticket: Ticket, *, clock: Callable[[], float]) -> None:
        self.route = route
        self.ticket = ticket
        self.span: Span | None = None  # the attempt's trace span, when tracing is on; ended by settle
        self._clock = clock
        self.stream: FlowGptStream | None = None  # set once the upstream has answered with a stream
        self.outcome: Outcome | None = None  # set by settle
        metrics = route.metrics
        metrics.selected.inc()
        metrics.upstream_requests.inc()
        metrics.inflight.inc()
        route.inflight += 1
        self.started = clock()

    def first_fragment(self) -> None:
        """The first text fragment arrived: its latency, on the route and the span."""
        waited = self._clock() - self.started
        self.route.metrics.first_token.observe(waited)
        if self.span is not None:
            self.span.set_attribute("gateway.first_token_seconds", round(waited, 6))

    async def answered(self) -> None:
        """The client will get this answer (a non-streamed one is read whole): a half-open trial succeeds now."""
        await self.route.breaker.answered(self.ticket)

    async def settle(self, exc: BaseException | None, *, finished: bool = True) -> Outcome:
        """End the attempt: ``exc`` is how it failed (None: it did not); ``finished``: its answer reached the end."""
        if self.outcome is not None:
            return self.outcome  # settled already: a second end changes nothing
        outcome = self.outcome = classify(exc, finished=finished)
        route, metrics = self.route, self.route.metrics
        try:
            if self.stream is not None:
                await self.stream.aclose()
        finally:
            route.inflight -= 1
            metrics.inflight.dec()
            metrics.upstream_duration.observe(self._clock() - self.started)
            if isinstance(exc, UpstreamError):
                metrics.upstream_errors[outcome.error_label(exc)].inc()
            await route.breaker.settle(self.ticket, outcome)
            if self.span is not None:
                _end_span(self.span, exc, outcome)
        return outcome

    def reaches_client(self) -> None:
        """The client's answer is this attempt's failure: count it against the route (what clients got)."""
        if self.outcome is not None and self.outcome.counts_against_route:
            self.route.metrics.client_errors.inc()


def _end_span(span: Span, exc: BaseException | None, outcome: Outcome) -> None:
    """End an attempt's span with its outcome, and the upstream error's kind and status when it failed."""
    if isinstance(exc, UpstreamError):
        Tracing.failed(span, exc.kind)
        status = getattr(exc, "upstream_status", None)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
    else:
        span.set_attribute("gateway.outcome", outcome.kind)
    span.end()
