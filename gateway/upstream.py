"""The resilient path to the upstream: admission, breaker, retries, timeouts and metrics.

Order of admission, cheapest refusal first: draining, working flag, concurrency
slot, breaker. Retries happen only before the first text fragment, because after
that the client has already seen part of an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import (
    CircuitOpenError,
    OverloadedError,
    ShuttingDownError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    is_retryable,
)
from gateway.retry import RetryBudget, backoff_delay

if TYPE_CHECKING:
    from gateway.breaker import CircuitBreaker
    from gateway.flowgpt.client import ChatPrompt, FlowGptClient, FlowGptStream
    from gateway.health import HealthState
    from gateway.limiter import ConcurrencyLimiter
    from gateway.metrics import Metrics

log = logging.getLogger(__name__)

MIN_ATTEMPT_SECONDS = 1.0  # a retry is only worth it with at least this long (or the first-token limit) left


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request deadlines in seconds."""

    first_token: float
    idle: float
    total: float


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
    ) -> None:
        self.client = client
        self.breaker = breaker
        self.health = health
        self.limiter = limiter
        self._budget = budget
        self._metrics = metrics
        self._timeouts = timeouts
        self._retry = retry
        self.draining = False
        self.active: set[asyncio.Task[object]] = set()  # chat handlers in flight, for the drain
        self.cut_by_shutdown: set[asyncio.Task[object]] = set()

    async def drain(self, grace: float) -> None:
        """Refuse new work, give in-flight chat requests ``grace`` seconds, then cut the rest.

        Cut handlers are cancelled and marked, so each can tell its client why
        (a stream error event, or a 503) instead of dropping the connection.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.active and loop.time() < deadline:  # noqa: ASYNC110 - handlers finish on their own
            await asyncio.sleep(0.05)
        if not self.active:
            return
        log.warning("shutdown grace over, cutting in-flight requests count=%d", len(self.active))
        self.cut_by_shutdown = set(self.active)
        for task in self.cut_by_shutdown:
            task.cancel()
        await asyncio.wait(self.cut_by_shutdown, timeout=2.0)

    def refuse_early(self) -> None:
        """Raise the refusals that need nothing from the request: draining, not working, breaker open.

        Called before the body is even read, so an outage costs callers (and us) the least;
        :meth:`open` repeats it because state may change while the body arrives.
        """
        if self.draining:
            raise ShuttingDownError("the gateway is shutting down", retry_after=1.0)
        refusal = self.health.admission_error()
        if refusal is not None:
            self._metrics.rejections["not_working"].inc()
            raise refusal
        circuit = self.breaker.refusal()
        if circuit is not None:
            self._metrics.rejections["half_open_busy" if circuit.half_open else "breaker_open"].inc()
            raise circuit

    async def open(self, prompt: ChatPrompt) -> Answer:
        """Admit the request and return an answer whose first fragment has arrived.

        Raises an AdmissionError (nothing was sent upstream) or the UpstreamError
        of the last attempt.
        """
        self.refuse_early()
        try:
            await self.limiter.acquire()
        except OverloadedError:
            self._metrics.rejections["overloaded"].inc()
            raise
        try:
            deadline = time.monotonic() + self._timeouts.total
            self._budget.record_request()
            stream, first, started = await self._open_with_retries(prompt, deadline)
        except BaseException:
            self.limiter.release()
            raise
        return Answer(self, stream, first, started)

    async def _open_with_retries(self, prompt: ChatPrompt, deadline: float) -> tuple[FlowGptStream, str, float]:
        attempt = 0
        while True:
            try:
                opened: tuple[FlowGptStream, str, float] = await self.breaker.call(
                    lambda: self._attempt(prompt, deadline), defer_success=True
                )
                return opened
            except CircuitOpenError as exc:
                self._metrics.rejections["half_open_busy" if exc.half_open else "breaker_open"].inc()
                raise
            except UpstreamError as exc:
                delay = self._retry_delay(exc, attempt, deadline)
                if delay is None:
                    raise
                log.info("retrying upstream attempt=%d delay_ms=%.0f kind=%s", attempt + 1, delay * 1000, exc.kind)
                self._metrics.retries.inc()
                await asyncio.sleep(delay)
                attempt += 1

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
        room = deadline - (time.monotonic() + delay)
        if room < min(self._timeouts.first_token, MIN_ATTEMPT_SECONDS) or not self._budget.try_acquire():
            return None
        return delay

    async def _attempt(self, prompt: ChatPrompt, deadline: float) -> tuple[FlowGptStream, str, float]:
        """One upstream attempt up to the first text fragment (the step the breaker guards)."""
        metrics = self._metrics
        metrics.upstream_requests.inc()
        metrics.inflight.inc()
        started = time.monotonic()
        remaining = deadline - started
        budget, phase = (
            (self._timeouts.first_token, "first_token")
            if self._timeouts.first_token < remaining
            else (max(0.0, remaining), "total")
        )
        stream: FlowGptStream | None = None
        try:
            try:
                async with asyncio.timeout(budget):
                    stream = await self.client.open(prompt)
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
            metrics.upstream_duration.observe(time.monotonic() - started)
            if isinstance(exc, UpstreamError):
                metrics.upstream_errors[exc.kind].inc()
            raise
        metrics.first_token.observe(time.monotonic() - started)
        stream.idle_timeout = self._timeouts.idle
        stream.deadline = deadline
        return stream, first, started

    async def finished(self, answer: Answer, error: UpstreamError | None, *, completed: bool) -> None:
        """Book-keeping when an answer ends: metrics, breaker outcome, the concurrency slot.

        A stream's success counts when it completes; one abandoned by the client counts as nothing.
        """
        self._metrics.inflight.dec()
        self._metrics.upstream_duration.observe(time.monotonic() - answer.started)
        self.limiter.release()
        if error is not None:
            self._metrics.upstream_errors[error.kind].inc()
            await self.breaker.record_failure(error)
        elif completed:
            await self.breaker.record_success()


class Answer:
    """An answer in progress: iterate it for text fragments, then :meth:`aclose` it (always)."""

    def __init__(self, service: UpstreamService, stream: FlowGptStream, first: str, started: float) -> None:
        self._service = service
        self._stream = stream
        self._first: str | None = first
        self.started = started
        self._closed = False
        self._completed = False

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> str:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            self._completed = True
            await self._close(None)
            raise
        except UpstreamError as exc:
            await self._close(exc)
            raise

    async def read_all(self) -> str:
        """The whole answer as one string."""
        return "".join([fragment async for fragment in self])

    async def aclose(self) -> None:
        """End the answer; a stream closed early (client gone) is not an upstream failure."""
        await self._close(None)

    async def _close(self, error: UpstreamError | None) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stream.aclose()
        await self._service.finished(self, error, completed=self._completed)
