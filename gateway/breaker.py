"""The upstream circuit breaker: a thin shell around the pure table in :mod:`gateway.breaker_table`.

The shell owns what is not pure: the injected monotonic ``clock``, the loop timer that fires
the period end (so gauges and readiness change without traffic), the aiobreaker counter
(:mod:`gateway.breaker_counter`, contained) and the bus. Each command is one event for
:func:`gateway.breaker_table.transition`; effects apply after the step, announcements last.
Reads are queries: an open period whose end passed reads half-open, and nothing is published
or changed by reading. :meth:`CircuitBreaker.decision` is the one admission question.

A call is admitted with a :class:`Ticket` (its generation and model); outcomes of older
generations are dropped. Only an outcome that counts against the route (see
:func:`gateway.outcome.classify`) is a failure; anything else is neutral. Models outside
``known_models`` share one bucket.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Final, TypedDict

from gateway import breaker_state as st
from gateway.breaker_counter import FailureCounter
from gateway.breaker_state import HALF_OPEN_BUSY_RETRY_AFTER, Decision, Ticket
from gateway.breaker_table import transition
from gateway.events import BreakerChanged, BreakerMode, BreakerState, EventBus, ProbeFinished
from gateway.flowgpt.protocol import MODELS
from gateway.open_period import PeriodTimer
from gateway.outcome import Outcome

__all__ = ["HALF_OPEN_BUSY_RETRY_AFTER", "BreakerSnapshot", "BreakerState", "CircuitBreaker", "Decision", "Ticket"]

log = logging.getLogger(__name__)

OTHER_MODELS: Final = "*"  # the one bucket for models outside ``known_models``


class BreakerSnapshot(TypedDict):
    """The breaker as a status endpoint shows it."""

    name: str
    state: BreakerState
    mode: BreakerMode
    consecutive_failures: int
    retry_after: float
    open_duration: float


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
        known_models: Collection[str] = MODELS,
        clock: Callable[[], float] = time.monotonic,
        events: EventBus | None = None,
    ) -> None:
        if fail_max < 1:
            raise ValueError("fail_max must be at least 1")
        if half_open_calls < 1:
            raise ValueError("a half-open period needs at least one trial slot: half_open_calls must be >= 1")
        if reset_timeout < 0 or reset_multiplier < 1 or reset_max < reset_timeout:
            raise ValueError("need 0 <= reset_timeout <= reset_max and reset_multiplier >= 1")
        self.name = name
        limits = st.Limits(name, float(reset_timeout), float(reset_multiplier), float(reset_max), half_open_calls)
        self._state = st.initial(limits)
        self._counter = FailureCounter(name=name, fail_max=fail_max)
        self._known = frozenset(known_models)
        self._clock = clock
        self._events = events or EventBus()
        self._outbox: deque[BreakerChanged] = deque()  # announcements of applied steps, published in order
        self._publishing = False
        self._timer = PeriodTimer(clock=clock, on_fire=lambda: self._step(st.PeriodEnd()))

    @property
    def state(self) -> BreakerState:
        """The effective state (a forced mode decides it); an open period that has ended reads half-open."""
        return st.effective(self._state, self._clock())

    @property
    def mode(self) -> BreakerMode:
        """``auto`` or the operator's forced mode."""
        return st.mode_of(self._state)

    @property
    def open_until(self) -> float | None:
        """Clock reading at which an automatically opened breaker turns half-open; None if not open now."""
        return self._state.open_until if self.state == "open" and self.mode == "auto" else None

    @property
    def consecutive_failures(self) -> int:
        """Consecutive upstream failures as aiobreaker counts them (opening does not reset)."""
        return self._counter.failures

    @property
    def trials_running(self) -> int:
        """Trial calls in flight in the current half-open period (0 in any other state)."""
        return self._state.trials if self._state.phase == "half_open" else 0

    @property
    def current_open_duration(self) -> float:
        """Length of the current (or, while half-open, the last) open period; reset_timeout after a close."""
        return self._state.duration

    def decision(self, model: str | None = None) -> Decision:
        """Whether a call for ``model`` (None: any) would be admitted now, else the refusal; admits nothing."""
        return st.decide(self._state, self._clock(), self._bucket(model))

    def retry_after(self) -> float:
        """Seconds until the breaker would admit a trial call; 0 when it admits now."""
        return self.decision().retry_after

    def snapshot(self) -> BreakerSnapshot:
        """State, mode, failure count, retry-after and open duration for status endpoints."""
        return {
            "name": self.name,
            "state": self.state,
            "mode": self.mode,
            "consecutive_failures": self.consecutive_failures,
            "retry_after": self.retry_after(),
            "open_duration": self._state.duration,
        }

    def admit(self, model: str | None = None) -> Ticket:
        """Admit one call for ``model`` or raise ``CircuitOpenError``; always :meth:`settle` the ticket."""
        self._catch_up()
        decision = self.decision(model)
        if decision.error is not None:
            raise decision.error
        if decision.trial:
            self._step(st.TrialAdmitted())
        counted = self._state.phase != "forced_closed"
        return Ticket(self._state.generation, trial=decision.trial, counted=counted, model=self._bucket(model))

    async def answered(self, ticket: Ticket) -> None:
        """The first token arrived: a half-open trial succeeds now (fast recovery), others wait for the end."""
        if ticket.trial and self._counts(ticket):
            await self._counter.replay(failed=False)
            self._step(st.Success(ticket.generation, ticket.model))

    async def settle(self, ticket: Ticket, outcome: Outcome) -> None:
        """The call is over: count ``outcome`` for the period it was admitted in, then free its trial slot.

        Called once per ticket (the :class:`gateway.attempt.Attempt` scope sees to it). A neutral
        outcome counts nothing; a trial slot left in a period that has ended since is not freed twice.
        """
        if self._counts(ticket):
            if outcome.counts_against_route:
                await self._counter.replay(failed=True)  # never suspends: no step runs between
                tripped = self._counter.state == "open"
                self._step(st.Failure(ticket.generation, tripped, model=ticket.model, cause=outcome.cause))
            elif outcome.succeeded:
                if self._counter.failures > 0:  # at zero aiobreaker's closed-state success changes nothing
                    await self._counter.replay(failed=False)
                self._step(st.Success(ticket.generation, ticket.model))
        if ticket.trial:  # only a trial holds a slot to free (the table's Neutral row changes nothing else)
            self._step(st.Neutral(ticket.generation, ticket.trial))

    def force_open(self) -> None:
        """Refuse every call until :meth:`automatic` or :meth:`force_closed`."""
        self._step(st.Override("forced_open"))

    def force_closed(self) -> None:
        """Admit every call and count nothing until :meth:`automatic` or :meth:`force_open`."""
        self._step(st.Override("forced_closed"))

    def automatic(self) -> None:
        """Hand control back to the breaker, starting closed with a fresh failure count."""
        self._step(st.Override("auto"))

    def probe_recovered(self, *, probe_started: float | None = None) -> None:
        """A health probe succeeded: end an open period now (never close), unless it began before the trip."""
        self._step(st.ProbeSuccess(probe_started))

    def probe_finished(self, event: ProbeFinished) -> None:
        """Subscriber: a successful probe shortens the open period (a failed one changes nothing)."""
        if event.result.ok:
            self.probe_recovered(probe_started=event.started)

    def trip(self, open_for: float, duration: float) -> bool:
        """A peer opened this route for ``open_for`` s (its period: ``duration``); whether this breaker changed."""
        self._catch_up()
        before = (self._state.phase, self._state.open_until)
        self._step(st.FleetTrip(open_for, duration))
        return (self._state.phase, self._state.open_until) != before

    def close_from_fleet(self) -> None:
        """Another process's trial succeeded: close an automatic open or half-open breaker."""
        self._step(st.FleetClose())

    def stop(self) -> None:
        """Cancel the open-period timer (the app is shutting down)."""
        self._timer.cancel()

    def _bucket(self, model: str | None) -> str | None:
        return model if model is None or model in self._known else OTHER_MODELS

    def _counts(self, ticket: Ticket) -> bool:
        return ticket.counted and ticket.generation == self._state.generation

    def _catch_up(self) -> None:
        """Commands first apply a pending period end, so what they decide on is what they announce."""
        if st.due(self._state, self._clock()):
            self._step(st.PeriodEnd())

    def _step(self, event: st.Event) -> None:
        """One transition; effects apply once the state is in place, announcements after all of them.

        A listener that calls back into the breaker (the fleet does) queues its own announcements
        behind the current ones, so nobody observes a half-done step and the order holds.
        """
        self._state, effects = transition(self._state, event, self._clock())
        for effect in effects:
            self._apply(effect)
        if self._publishing:
            return
        self._publishing = True
        try:
            while self._outbox:
                self._events.publish(self._outbox.popleft())
        finally:
            self._publishing = False

    def _apply(self, effect: st.Effect) -> None:
        if isinstance(effect, st.SyncCounter):
            self._counter.follow(effect.to)
        elif isinstance(effect, st.StartTimer):
            self._timer.arm(effect.until)  # early on an injected clock: the table re-arms it
        elif isinstance(effect, st.CancelTimer):
            self._timer.cancel()
        elif isinstance(effect, st.RefuseModel):
            log.warning("breaker refuses model breaker=%s model=%s until=%.1f", self.name, effect.model, effect.until)
        elif isinstance(effect, st.Publish):
            old, new, mode = effect.change.old, effect.change.new, effect.change.mode
            level = logging.WARNING if new == "open" else logging.INFO
            log.log(level, "breaker state change breaker=%s old=%s new=%s mode=%s", self.name, old, new, mode)
            self._outbox.append(effect.change)
