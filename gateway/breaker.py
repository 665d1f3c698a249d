"""The upstream circuit breaker: when calls are admitted, for how long it stays open, what counts.

:class:`gateway.breaker_counter.FailureCounter` (aiobreaker, contained) counts failures and
decides trips; this module adds what aiobreaker gets wrong or lacks:

* Time: every timing decision uses the injected monotonic ``clock``. The breaker moves
  open -> half-open when ``open_until`` passes: a loop timer fires then (so gauges and
  readiness change without traffic), and every read of the state checks the clock too (so
  an injected clock needs no timer). Open periods grow by ``reset_multiplier`` per failed
  trial, capped at ``reset_max``.
* Probe: :meth:`CircuitBreaker.probe_recovered` moves an open breaker to half-open at once, when
  the probe started after the breaker opened (an older probe saw an older upstream). It never
  closes it: only a live trial's success does.
* Half-open admits at most ``half_open_calls`` concurrent trials (:class:`gateway.trial_gate.TrialGate`);
  further callers get ``CircuitOpenError(half_open=True)`` (code ``half_open_busy``) instead of
  reaching the upstream.
* Outcomes: a call is admitted with a :class:`Ticket` that remembers the state period (generation)
  it was admitted in; an outcome whose period has ended is dropped, so requests admitted before a
  trip (or before a close) never decide a later period.
* What counts: an :class:`UpstreamError` for which ``counts_against_upstream`` holds is a failure.
  Everything else is neutral: it neither counts nor resets the count, and a trial that ends so
  frees its slot for the next caller. That covers a per-request rejection (upstream 400/413/422),
  a stream cut by the request's own total deadline, ``asyncio.CancelledError`` (a client
  disconnect) and any other exception (a gateway bug says nothing about the upstream; aiobreaker
  would count it as a success, so it is never replayed).

Fleet: with shared state (:mod:`gateway.fleet`), trips and closes of other processes arrive through
:meth:`CircuitBreaker.trip` and :meth:`CircuitBreaker.close_from_fleet`. Each process runs its own
half-open trials; a peer's close only ends the period sooner.

Operator modes win over everything: ``forced_open`` refuses every call, ``forced_closed`` admits
every call and counts nothing. Entering either mode and :meth:`CircuitBreaker.automatic` reset the
automatic machinery (closed, no failures, no growth).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypedDict, TypeVar

from gateway.breaker_counter import FailureCounter
from gateway.errors import CircuitOpenError, UpstreamError, counts_against_upstream
from gateway.events import (
    BreakerChanged,
    BreakerMode,
    BreakerState,
    EventBus,
    ProbeFinished,
)
from gateway.open_period import OpenPeriod
from gateway.trial_gate import TrialGate

__all__ = [
    "HALF_OPEN_BUSY_RETRY_AFTER",
    "BreakerMode",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Ticket",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A trial is in flight and its length is unknown; refusals are cheap, so ask for a short wait.
HALF_OPEN_BUSY_RETRY_AFTER: Final = 1.0


class BreakerSnapshot(TypedDict):
    """The breaker as a status endpoint shows it."""

    name: str
    state: BreakerState
    mode: BreakerMode
    consecutive_failures: int
    retry_after: float
    open_duration: float


@dataclass(slots=True)
class Ticket:
    """One admitted call: the period it belongs to, and whether it holds a half-open trial slot."""

    generation: int
    trial: bool
    counted: bool = True  # False in forced-closed mode: nothing is counted
    released: bool = False


class CircuitBreaker:
    """Guards the upstream's opening step; see the module docstring for the semantics."""

    def __init__(
        self,
        *,
        name: str = "flowgpt",
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        reset_multiplier: float = 1.0,
        reset_max: float = 300.0,
        half_open_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        events: EventBus | None = None,
    ) -> None:
        if fail_max < 1:
            raise ValueError("fail_max must be at least 1")
        if reset_timeout < 0 or reset_multiplier < 1 or reset_max < reset_timeout:
            raise ValueError("need 0 <= reset_timeout <= reset_max and reset_multiplier >= 1")
        self.name = name
        self._events = events or EventBus()
        self._counter = FailureCounter(name=name, fail_max=fail_max)
        self._mode: BreakerMode = "auto"
        self._reported: BreakerState = "closed"
        self._period = OpenPeriod(
            reset_timeout=float(reset_timeout),
            multiplier=float(reset_multiplier),
            reset_max=float(reset_max),
            clock=clock,
            on_end=self._period_over,
        )
        self._trial_gate = TrialGate(slots=half_open_calls)
        self._last_failure: str | None = None  # cause of the latest counted failure: the cause of a trip
        self._generation = 0  # bumped on every state change; outcomes from older periods are dropped

    # -- read side ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The effective state (a forced mode decides it); an open period that has ended reads half-open."""
        if self._mode == "auto" and self._period.over():
            self._end_open_period()
        return self._raw_state()

    @property
    def mode(self) -> BreakerMode:
        """``auto`` or the operator's forced mode."""
        return self._mode

    @property
    def open_until(self) -> float | None:
        """Clock reading at which an automatically opened breaker turns half-open; None otherwise."""
        return self._period.until

    @property
    def consecutive_failures(self) -> int:
        """Consecutive upstream failures as aiobreaker counts them (opening does not reset)."""
        return self._counter.failures

    @property
    def trials_running(self) -> int:
        """Trial calls in flight in the current half-open period (0 in any other state)."""
        return self._trial_gate.running if self._reported == "half_open" else 0

    @property
    def current_open_duration(self) -> float:
        """Length of the current (or, while half-open, the last) open period; reset_timeout after a close."""
        return self._period.duration

    def retry_after(self) -> float:
        """Seconds until the breaker would admit a trial call; 0 when it admits now."""
        if self._mode == "forced_open":
            return self._period.duration
        state = self.state
        if state == "open" and self._period.until is not None:
            return self._period.remaining()
        if state == "half_open" and not self._trial_gate.free:
            return HALF_OPEN_BUSY_RETRY_AFTER
        return 0.0

    def snapshot(self) -> BreakerSnapshot:
        """State, mode, failure count, retry-after and open duration for status endpoints."""
        return {
            "name": self.name,
            "state": self.state,
            "mode": self._mode,
            "consecutive_failures": self.consecutive_failures,
            "retry_after": self.retry_after(),
            "open_duration": self._period.duration,
        }

    def admits(self) -> bool:
        """Whether a call would be admitted right now; builds no error (the cheap form of :meth:`refusal`)."""
        if self._mode != "auto":
            return self._mode == "forced_closed"
        state = self.state
        return state == "closed" or (state == "half_open" and self._trial_gate.free)

    def refusal(self) -> CircuitOpenError | None:
        """The error a call would be refused with right now, or None; admits nothing.

        Lets callers refuse before doing any work of their own (reading a body, say).
        """
        if self._mode == "forced_open":
            return CircuitOpenError(
                f"circuit breaker {self.name!r} is forced open by an operator", retry_after=self.retry_after()
            )
        state = self.state
        if state == "open":
            remaining = self.retry_after()
            return CircuitOpenError(
                f"circuit breaker {self.name!r} is open; retry in {math.ceil(remaining)} s", retry_after=remaining
            )
        if state != "half_open" or self._trial_gate.free:
            return None
        return CircuitOpenError(
            f"circuit breaker {self.name!r} is half-open and its trial call is in progress",
            retry_after=HALF_OPEN_BUSY_RETRY_AFTER,
            half_open=True,
        )

    # -- admitted calls ----------------------------------------------------------------------

    def admit(self) -> Ticket:
        """Admit one call or raise ``CircuitOpenError``; always :meth:`release` the ticket."""
        if self._mode == "forced_closed":
            return Ticket(self._generation, trial=False, counted=False)
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        trial = self._counter.state == "half_open"
        if trial:
            self._trial_gate.take()
        return Ticket(self._generation, trial=trial)

    def release(self, ticket: Ticket) -> None:
        """The call is over (any outcome): free its half-open trial slot, if that period still runs."""
        if ticket.released:
            return
        ticket.released = True
        if ticket.trial and ticket.generation == self._generation:
            self._trial_gate.give_back()  # the period did not change: the trial ended neutral

    async def failed(self, ticket: Ticket, error: BaseException) -> None:
        """Count ``error`` (before or after the first token) if it says something about the upstream."""
        if not self._current(ticket):
            return
        if isinstance(error, UpstreamError) and counts_against_upstream(error):
            self._last_failure = error.cause
            await self._replay(error)

    async def answered(self, ticket: Ticket) -> None:
        """The first token arrived: a half-open trial succeeds now (fast recovery), others wait for the end."""
        if ticket.trial and self._current(ticket):
            await self._replay(None)

    async def completed(self, ticket: Ticket) -> None:
        """The answer ended cleanly: a success for the period the call was admitted in."""
        if self._current(ticket) and self._counter.failures > 0:
            await self._replay(None)  # at zero aiobreaker's closed-state success changes nothing

    async def call(self, fn: Callable[[], Awaitable[T]], *, defer_success: bool = False) -> T:
        """Admit, run ``fn`` and count its outcome; ``defer_success`` leaves a success to :meth:`completed`."""
        if inspect.isasyncgenfunction(fn):
            raise TypeError("guard the coroutine that opens the stream, not an async generator function")
        ticket = self.admit()
        try:
            try:
                result = await fn()
            except BaseException as error:
                await self.failed(ticket, error)
                raise  # the original error, also for the call that tripped the breaker
            if ticket.trial:
                await self.answered(ticket)
            elif not defer_success:
                await self.completed(ticket)
            return result
        finally:
            self.release(ticket)

    # -- operator and probe control ----------------------------------------------------------

    def force_open(self) -> None:
        """Refuse every call until :meth:`automatic` or :meth:`force_closed`."""
        self._set_mode("forced_open")

    def force_closed(self) -> None:
        """Admit every call and count nothing until :meth:`automatic` or :meth:`force_open`."""
        self._set_mode("forced_closed")

    def automatic(self) -> None:
        """Hand control back to the breaker, starting closed with a fresh failure count."""
        self._set_mode("auto")

    def probe_recovered(self, *, probe_started: float | None = None) -> None:
        """A health probe succeeded: end an open period now, so a live trial can confirm recovery.

        ``probe_started`` (a clock reading): a probe that began before the breaker opened is ignored.
        """
        if self._mode != "auto" or self.state != "open":
            return
        started = self._period.started_at
        if probe_started is not None and started is not None and probe_started < started:
            return
        self._end_open_period()

    # -- fleet -------------------------------------------------------------------------------

    def trip(self, open_for: float, duration: float) -> bool:
        """Another process opened this route: refuse for ``open_for`` s; ``duration`` is its open period.

        Returns whether the breaker changed (a forced mode ignores the fleet's trips).
        """
        if self._mode != "auto" or not (math.isfinite(open_for) and math.isfinite(duration)) or open_for <= 0:
            return False  # a peer (or Redis content) must never make a route open forever
        open_for = min(open_for, self._period.reset_max)
        if self.state == "open" and self._period.remaining() >= open_for:
            return False  # already open at least as long
        self._period.adopt(remaining=open_for, duration=duration)  # extends a running period in place
        self._counter.open()
        self._sync(traffic=False, open_for=open_for, fleet=True)  # announces a change from closed or half-open
        return True

    def close_from_fleet(self) -> None:
        """Another process's trial succeeded: close an automatic open or half-open breaker."""
        if self._mode == "auto" and self.state != "closed":
            self._counter.close()
            self._sync(traffic=False, fleet=True)

    def stop(self) -> None:
        """Cancel the open-period timer (the app is shutting down)."""
        self._period.stop()

    def probe_finished(self, event: ProbeFinished) -> None:
        """Subscriber: a successful probe shortens the open period (a failed one changes nothing)."""
        if event.result.ok:
            self.probe_recovered(probe_started=event.started)

    # -- internals ---------------------------------------------------------------------------

    def _current(self, ticket: Ticket) -> bool:
        return ticket.counted and self._mode == "auto" and ticket.generation == self._generation

    def _end_open_period(self) -> None:
        self._counter.half_open()
        self._sync(traffic=False)

    async def _replay(self, error: Exception | None) -> None:
        """Count one finished call's outcome, then announce any state change it caused."""
        try:
            await self._counter.replay(error)
        finally:
            self._sync(traffic=True)

    def _set_mode(self, mode: BreakerMode) -> None:
        if mode == self._mode:
            return
        self._mode = mode
        self._counter.close()  # closed aiobreaker, zero failures
        self._period.reset()
        self._generation += 1
        self._sync(traffic=False)

    def _sync(self, *, traffic: bool, open_for: float | None = None, fleet: bool = False) -> None:
        """Book-keep and announce a change of the effective state; ``traffic``: live calls caused it.

        ``open_for``: the rest of an open period started elsewhere (a fleet trip), instead of a new one.
        """
        old, new = self._reported, self._raw_state()
        if old == new:
            return
        self._reported = new
        self._generation += 1
        if new == "closed":
            self._period.reset()
        elif new == "half_open":
            self._period.end()
            self._trial_gate.reset()
        elif self._mode == "auto":
            self._period.start(grow=old == "half_open", length=open_for)
        log_level = logging.WARNING if new == "open" else logging.INFO
        log.log(log_level, "breaker state change breaker=%s old=%s new=%s mode=%s", self.name, old, new, self._mode)
        cause = self._last_failure if traffic and new == "open" else None
        self._events.publish(
            BreakerChanged(self.name, old, new, self._mode, by_traffic=traffic, cause=cause, from_fleet=fleet)
        )

    def _raw_state(self) -> BreakerState:
        """The effective state without the clock check (which would recurse from ``_sync``)."""
        if self._mode == "forced_open":
            return "open"
        if self._mode == "forced_closed":
            return "closed"
        return self._counter.state

    def _period_over(self) -> None:
        """The open period's timer fired: the read ends the period and announces it."""
        _ = self.state
