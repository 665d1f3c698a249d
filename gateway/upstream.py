"""The resilient path to the upstream: one scope per call holds admission, slot, deadlines and outcome.

``async with service.answer(prompt) as answer:`` checks admission once (some route
works and its breaker admits, then a concurrency slot), opens the stream on a route
picked by :class:`RoutePool`, and on leaving settles everything in one place: the stream
is closed, the slot freed, the route's metrics and breaker told the outcome. Draining is
the handlers' business (see :mod:`gateway.inflight`); the caller checks it first.

Before the first text fragment, a failure that counts against a route moves the call
to another route that admits it (a failover), else it may be retried on the same route;
both are bounded by ``retry_max``, the retry budget and the deadline. A per-request
rejection is never retried anywhere. After the first fragment nothing is retried: the
client already has part of an answer. A non-streamed answer is read whole inside its attempt,
so a failure while it is read is handled like one before the first token (it is replayed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, use_span

from gateway.answer import Answer, read_whole
from gateway.attempt import Attempt
from gateway.deadlines import Deadline
from gateway.errors import (
    AdmissionError,
    CircuitOpenError,
    OverloadedError,
    TimeoutPhase,
    UpstreamError,
    UpstreamNotWorkingError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
)
from gateway.overhead import answered_by, waiting
from gateway.rate_limits import RateLimits
from gateway.retry import RetryBudget, RetryPolicy, backoff_delay
from gateway.route_pool import come_back
from gateway.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.cutter import Cutter
    from gateway.flowgpt.client import ChatPrompt
    from gateway.limiter import ConcurrencyLimiter
    from gateway.metrics import Metrics
    from gateway.route_pool import Route, RoutePool

log = logging.getLogger(__name__)

MIN_ATTEMPT_SECONDS = 1.0  # a retry is only worth it with at least this long (or the first-token limit) left


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request limits in seconds; ``client_write`` bounds one blocked write to the client."""

    first_token: float
    idle: float
    total: float
    client_write: float = 30.0


class UpstreamService:
    """Opens answers from the upstream on behalf of chat requests."""

    def __init__(
        self,
        routes: RoutePool,
        *,
        limiter: ConcurrencyLimiter,
        budget: RetryBudget,
        metrics: Metrics,
        timeouts: Timeouts,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.routes = routes
        self._tracing = tracing or Tracing(endpoint=None)
        self.limiter = limiter
        self._budget = budget
        self._metrics = metrics
        self.timeouts = timeouts
        self._retry = retry
        self._clock = clock

    def refuse_early(self) -> None:
        """Raise the refusal when no route would take a call now (none working, every breaker refusing).

        Called before the body is even read, so an outage costs callers (and us) the least;
        :meth:`answer` repeats it because state may change while the body arrives.
        """
        error = self.routes.refusal()
        if error is not None:
            raise self._refused(error)

    def _refused(self, error: AdmissionError) -> AdmissionError:
        """Count a refusal by its reason and hand it back for raising."""
        if isinstance(error, UpstreamNotWorkingError):
            reason = "not_working"
        elif isinstance(error, CircuitOpenError) and error.half_open:
            reason = "half_open_busy"
        else:
            reason = "breaker_open"
        self._metrics.rejections[reason].inc()
        return error

    def answer(self, prompt: ChatPrompt, *, whole: Callable[[], Cutter] | None = None) -> AnswerScope:
        """Admit the request and yield an answer whose first fragment has arrived.

        With ``whole`` (non-streamed requests) the answer is read to its end into a fresh cutter per
        attempt before it is yielded, and a failure while reading is failed over or retried like one
        before the first token: the client has seen nothing.

        Raises an AdmissionError (nothing was sent upstream) or the UpstreamError of the
        last attempt. A client that goes away (cancellation) is no upstream failure. The caller
        has checked :meth:`refuse_early`; a route that stopped admitting since is skipped by the pick.
        """
        return AnswerScope(self, prompt, whole)

    async def _open(self, prompt: ChatPrompt, whole: Callable[[], Cutter] | None) -> Answer:
        """A slot, then an answer from some route; the slot is given back if none comes."""
        try:
            await self.limiter.acquire()
        except OverloadedError:
            self._metrics.rejections["overloaded"].inc()
            raise
        try:
            deadline = self._clock() + self.timeouts.total
            self._budget.record_request()
            answer = await self._open_with_failover(prompt, deadline, whole)
        except BaseException:
            self.limiter.release()
            raise
        answered_by(answer.route.name)
        return answer

    async def _close(self, answer: Answer) -> None:
        """Settle the answer's attempt as the handler's iteration saw it end, then free the slot."""
        try:
            # A client that left is neither completed nor failed: the attempt's outcome says so.
            await answer.attempt.settle(answer.error, finished=answer.completed)
            if answer.error is not None:
                answer.attempt.reaches_client()  # the client's answer broke on this route
        finally:
            self.limiter.release()

    async def _open_with_failover(
        self, prompt: ChatPrompt, deadline: float, whole: Callable[[], Cutter] | None
    ) -> Answer:
        """The policy: which route, fail over or retry, and when to stop; each attempt settles itself."""
        failed_routes: set[str] = set()
        tries = 0  # retries and failovers made so far
        retryable_seen = False  # some failure of this request may clear up on a second try
        retrying = False  # the next attempt is a retry after a pause (counted on the route it goes to)
        last: tuple[Attempt, UpstreamError] | None = None
        limits = RateLimits()
        while True:
            route = self.routes.pick(failed_routes, prompt.model)
            if route is None:
                if last is not None:
                    raise self._give_up(*last, limits)
                raise self._refused(self.routes.refusal(prompt.model) or come_back())
            cutter = whole() if whole is not None else None  # made before the ticket: if it fails, nothing is held
            try:
                ticket = route.breaker.admit(prompt.model)
            except CircuitOpenError:
                failed_routes.add(route.name)  # lost a race for the trial: skipped, not a failure
                continue
            reason = "retry" if retrying else "failover" if tries else "first"
            if retrying:
                route.metrics.retries.inc()
                retrying = False
            attempt = Attempt(route, ticket, clock=self._clock)
            try:  # from here on, whatever fails (the span too) settles the attempt: a trial slot never leaks
                span = attempt.span = self._attempt_span(route, prompt, tries, reason)
                if span is None:
                    first = await self._attempt(attempt, prompt, deadline, cutter)
                else:  # the attempt's span is current while it runs: a traceparent sent upstream names it
                    with use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                        first = await self._attempt(attempt, prompt, deadline, cutter)
            except BaseException as exc:
                outcome = await attempt.settle(exc)
                if not outcome.may_fail_over:
                    raise  # cancelled, a bug, the request's own deadline, or a rejection every route would repeat
                if not isinstance(exc, UpstreamError):  # only an upstream failure may fail over
                    raise
                last = (attempt, exc)
                limits.saw(exc)
                retryable_seen = retryable_seen or outcome.retryable
                failed_routes.add(route.name)
                if self.routes.any_admits(failed_routes, prompt.model):
                    if not self._may_try_again(tries, 0.0, deadline):
                        if (error := self._give_up(attempt, exc, limits)) is exc:
                            raise
                        raise error from exc
                    log.info("failing over from_route=%s kind=%s", route.name, exc.kind)
                    route.metrics.failovers.inc()
                else:
                    # Every route has failed this request (or refuses): a pause, then any route that still
                    # admits a call, if some failure may clear up.
                    delay = self._retry_delay(exc, tries, deadline, prompt.model) if retryable_seen else None
                    if delay is None:
                        if (error := self._give_up(attempt, exc, limits)) is exc:
                            raise
                        raise error from exc
                    log.info(
                        "retrying upstream after route=%s delay_ms=%.0f kind=%s", route.name, delay * 1000, exc.kind
                    )
                    with waiting():
                        await asyncio.sleep(delay)
                    failed_routes.clear()
                    retrying = True
                tries += 1
                continue
            assert attempt.stream is not None
            return Answer(attempt, attempt.stream, first, deadline, cutter)

    @staticmethod
    def _give_up(attempt: Attempt, error: UpstreamError, limits: RateLimits) -> UpstreamError:
        """The error the client gets after ``attempt``, the last: a 429 when every route said 429."""
        attempt.reaches_client()
        return limits.answer(error)

    def _attempt_span(self, route: Route, prompt: ChatPrompt, attempt: int, reason: str) -> Span | None:
        """A client span for one upstream attempt (None when tracing is off: no cost per attempt)."""
        if not self._tracing.enabled:
            return None
        return self._tracing.tracer.start_span(
            "chat flowgpt",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "flowgpt",
                "gen_ai.request.model": prompt.model,
                "gateway.route": route.name,
                "gateway.attempt": attempt + 1,
                "gateway.attempt.reason": reason,
            },
        )

    def _retry_delay(self, error: UpstreamError, attempts: int, deadline: float, model: str) -> float | None:
        """Seconds to wait before another try after ``error``, or None when none may be made."""
        if not self.routes.any_admits(model=model):
            return None  # every route refuses now: do not pile on
        delay = backoff_delay(attempts, base=self._retry.backoff_base, cap=self._retry.backoff_max)
        if isinstance(error, UpstreamRateLimitedError) and error.retry_after is not None:
            if error.retry_after > self._retry.backoff_max:
                return None  # the caller can wait that out without holding one of our slots
            delay = max(delay, error.retry_after)
        return delay if self._may_try_again(attempts, delay, deadline) else None

    def _may_try_again(self, attempts: int, delay: float, deadline: float) -> bool:
        """Within ``retry_max``, with room left in the deadline after ``delay``, and the budget allowing."""
        if attempts >= self._retry.max_retries:
            return False
        # The next attempt needs time of its own, or it is a timeout waiting to happen.
        room = deadline - (self._clock() + delay)
        return room >= min(self.timeouts.first_token, MIN_ATTEMPT_SECONDS) and self._budget.try_acquire()

    async def _attempt(self, attempt: Attempt, prompt: ChatPrompt, deadline: float, cutter: Cutter | None) -> str:
        """Open the stream up to its first text fragment (with ``cutter``, read the answer to its end)."""
        remaining = deadline - attempt.started
        phase: TimeoutPhase = "first_token" if self.timeouts.first_token < remaining else "total"
        budget = self.timeouts.first_token if phase == "first_token" else max(0.0, remaining)
        client = attempt.route.client
        try:
            with waiting(), Deadline(budget):
                stream = await client.open(prompt, idle_timeout=self.timeouts.idle, deadline=deadline)
                attempt.stream = stream
                first = await anext(stream)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"no answer from the upstream within {budget:.1f}s", phase=phase) from exc
        attempt.first_fragment()
        if cutter is not None:
            await read_whole(stream, first, cutter)
        await attempt.answered()
        return first


class AnswerScope:
    """``async with service.answer(prompt) as answer:``; leaving it settles the call and frees the slot.

    A class rather than an ``asynccontextmanager`` generator: every chat request enters one, and the
    generator's machinery cost about five times a plain ``__aenter__``/``__aexit__`` pair.
    """

    __slots__ = ("_answer", "_prompt", "_service", "_whole")

    def __init__(self, service: UpstreamService, prompt: ChatPrompt, whole: Callable[[], Cutter] | None) -> None:
        self._service = service
        self._prompt = prompt
        self._whole = whole
        self._answer: Answer | None = None

    async def __aenter__(self) -> Answer:
        self._answer = await self._service._open(self._prompt, self._whole)
        return self._answer

    async def __aexit__(self, *exc: object) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            await self._service._close(answer)
