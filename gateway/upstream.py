"""The resilient path to the upstream: one scope per call holds admission, slot, deadlines and outcome.

``async with service.answer(prompt) as answer:`` checks admission once (working flag, a
concurrency slot, the breaker), opens the stream with retries before the first text
fragment, and on leaving settles everything in one place: the stream is closed, the slot
freed, the metrics and the breaker told the outcome. Draining is the handlers' business
(see :mod:`gateway.inflight`); the caller checks it first.

Retries happen only before the first fragment, because after that the client has
already seen part of an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import (
    CircuitOpenError,
    OverloadedError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    is_retryable,
)
from gateway.retry import RetryBudget, backoff_delay

if TYPE_CHECKING:
    from gateway.breaker import CircuitBreaker, Ticket
    from gateway.flowgpt.client import ChatPrompt, FlowGptClient, FlowGptStream
    from gateway.health import HealthState
    from gateway.limiter import ConcurrencyLimiter
    from gateway.metrics import Metrics

log = logging.getLogger(__name__)

MIN_ATTEMPT_SECONDS = 1.0  # a retry is only worth it with at least this long (or the first-token limit) left


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request limits in seconds; ``client_write`` bounds one blocked write to the client."""

    first_token: float
    idle: float
    total: float
    client_write: float = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many retries and how far apart."""

    max_retries: int
    backoff_base: float
    backoff_max: float


class UpstreamService:
    """Opens answers from the upstream on behalf of chat requests."""

    def __init__(
        self,
        client: FlowGptClient,
        *,
        breaker: CircuitBreaker,
        health: HealthState,
        limiter: ConcurrencyLimiter,
        budget: RetryBudget,
        metrics: Metrics,
        timeouts: Timeouts,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self.health = health
        self.limiter = limiter
        self._budget = budget
        self._metrics = metrics
        self.timeouts = timeouts
        self._retry = retry
        self._clock = clock

    def refuse_early(self) -> None:
        """Raise the refusals that need nothing from the request: not working, breaker open.

        Called before the body is even read, so an outage costs callers (and us) the least;
        :meth:`answer` repeats it because state may change while the body arrives.
        """
        refusal = self.health.admission_error()
        if refusal is not None:
            self._metrics.rejections["not_working"].inc()
            raise refusal
        circuit = self.breaker.refusal()
        if circuit is not None:
            self._metrics.rejections["half_open_busy" if circuit.half_open else "breaker_open"].inc()
            raise circuit

    @asynccontextmanager
    async def answer(self, prompt: ChatPrompt) -> AsyncIterator[Answer]:
        """Admit the request and yield an answer whose first fragment has arrived.

        Raises an AdmissionError (nothing was sent upstream) or the UpstreamError of the
        last attempt. A client that goes away (cancellation) is no upstream failure.
        """
        self.refuse_early()
        try:
            await self.limiter.acquire()
        except OverloadedError:
            self._metrics.rejections["overloaded"].inc()
            raise
        try:
            refusal = self.health.admission_error()  # the flag may have gone off during the queue wait
            if refusal is not None:
                self._metrics.rejections["not_working"].inc()
                raise refusal
            deadline = self._clock() + self.timeouts.total
            self._budget.record_request()
            stream, first, ticket, started = await self._open_with_retries(prompt, deadline)
            answer = Answer(stream, first, deadline)
            try:
                yield answer
            finally:
                await self._settle(answer, ticket, started)
        finally:
            self.limiter.release()

    async def _settle(self, answer: Answer, ticket: Ticket, started: float) -> None:
        """The answer's end: close the stream, then metrics and the breaker from what it saw."""
        await answer.stream.aclose()
        metrics = self._metrics
        metrics.inflight.dec()
        metrics.upstream_duration.observe(self._clock() - started)
        if answer.error is not None:
            metrics.upstream_errors[answer.error.kind].inc()
            await self.breaker.failed(ticket, answer.error)
        elif answer.completed:
            await self.breaker.completed(ticket)
        self.breaker.release(ticket)

    async def _open_with_retries(
        self, prompt: ChatPrompt, deadline: float
    ) -> tuple[FlowGptStream, str, Ticket, float]:
        attempt = 0
        while True:
            try:
                ticket = self.breaker.admit()
            except CircuitOpenError as exc:
                self._metrics.rejections["half_open_busy" if exc.half_open else "breaker_open"].inc()
                raise
            try:
                stream, first, started = await self._attempt(prompt, deadline)
            except BaseException as exc:
                await self.breaker.failed(ticket, exc)
                self.breaker.release(ticket)
                if not isinstance(exc, UpstreamError):
                    raise
                delay = self._retry_delay(exc, attempt, deadline)
                if delay is None:
                    raise
                log.info("retrying upstream attempt=%d delay_ms=%.0f kind=%s", attempt + 1, delay * 1000, exc.kind)
                self._metrics.retries.inc()
                await asyncio.sleep(delay)
                attempt += 1
                continue
            await self.breaker.answered(ticket)
            if ticket.trial:
                self.breaker.release(ticket)  # the trial is decided: let the next caller in
            return stream, first, ticket, started

    def _retry_delay(self, error: UpstreamError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying ``error``, or None when it must not be retried."""
        if attempt >= self._retry.max_retries or not is_retryable(error):
            return None
        if self.breaker.state != "closed":
            return None  # the breaker refuses (or probes with a single trial): do not pile on
        delay = backoff_delay(attempt, base=self._retry.backoff_base, cap=self._retry.backoff_max)
        if isinstance(error, UpstreamRateLimitedError) and error.retry_after is not None:
            if error.retry_after > self._retry.backoff_max:
                return None  # the caller can wait that out without holding one of our slots
            delay = max(delay, error.retry_after)
        # The retry needs time of its own after the pause, or it is a timeout waiting to happen.
        room = deadline - (self._clock() + delay)
        if room < min(self.timeouts.first_token, MIN_ATTEMPT_SECONDS) or not self._budget.try_acquire():
            return None
        return delay

    async def _attempt(self, prompt: ChatPrompt, deadline: float) -> tuple[FlowGptStream, str, float]:
        """One upstream attempt up to the first text fragment."""
        metrics = self._metrics
        metrics.upstream_requests.inc()
        metrics.inflight.inc()
        started = self._clock()
        remaining = deadline - started
        budget, phase = (
            (self.timeouts.first_token, "first_token")
            if self.timeouts.first_token < remaining
            else (max(0.0, remaining), "total")
        )
        stream: FlowGptStream | None = None
        try:
            try:
                async with asyncio.timeout(budget):
                    stream = await self.client.open(prompt, idle_timeout=self.timeouts.idle, deadline=deadline)
                    first = await anext(stream)
            except TimeoutError as exc:
                raise UpstreamTimeoutError(
                    f"no answer from the upstream within {budget:.1f}s",
                    phase=phase,  # type: ignore[arg-type]
                ) from exc
        except BaseException as exc:
            if stream is not None:
                await stream.aclose()
            metrics.inflight.dec()
            metrics.upstream_duration.observe(self._clock() - started)
            if isinstance(exc, UpstreamError):
                metrics.upstream_errors[exc.kind].inc()
            raise
        metrics.first_token.observe(self._clock() - started)
        return stream, first, started


class Answer:
    """An answer in progress: iterate it for text fragments inside its ``answer()`` scope.

    It remembers how the stream ended (``completed`` or ``error``), which the scope settles.
    """

    __slots__ = ("_first", "completed", "deadline", "error", "stream")

    def __init__(self, stream: FlowGptStream, first: str, deadline: float) -> None:
        self.stream = stream
        self._first: str | None = first
        self.deadline = deadline  # a reading of the service's clock
        self.completed = False
        self.error: UpstreamError | None = None

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> str:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            return await anext(self.stream)
        except StopAsyncIteration:
            self.completed = True
            raise
        except UpstreamError as exc:
            self.error = exc
            raise

    async def read_all(self) -> str:
        """The whole answer as one string."""
        return "".join([fragment async for fragment in self])
