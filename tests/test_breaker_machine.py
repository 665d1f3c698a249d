"""The breaker shell under random command sequences (Hypothesis): the invariants hold after every step."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from gateway.breaker import CircuitBreaker, Ticket
from gateway.errors import CircuitOpenError, UpstreamConnectError, UpstreamRejectedError
from gateway.events import BreakerChanged, EventBus
from gateway.outcome import COMPLETED, CUT_SHORT, classify
from tests.clock_support import FakeClock

SLOTS = 2
MODELS = ("gpt-3.5-turbo", "gpt-4-turbo", "not-a-model", None)


def run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a breaker coroutine that must finish in one step (the counter's replay never suspends)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("the breaker suspended while counting an outcome")


class BreakerMachine(RuleBasedStateMachine):
    """Random admissions, outcomes, releases, time, operator, probe and fleet commands against one breaker."""

    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.events: list[BreakerChanged] = []
        bus = EventBus()
        bus.subscribe(BreakerChanged, self.events.append)
        self.breaker = CircuitBreaker(
            fail_max=2, reset_timeout=10, reset_multiplier=2, reset_max=40, half_open_calls=SLOTS,
            clock=self.clock, events=bus,
        )  # fmt: skip

    @rule(target=tickets, model=st.sampled_from(MODELS))
    def admit(self, model: str | None) -> Ticket | None:
        """An admission agrees with the decision asked for just before it."""
        decision = self.breaker.decision(model)
        refused: CircuitOpenError | None = None
        try:
            ticket = self.breaker.admit(model)
        except CircuitOpenError as error:
            refused = error
        if refused is not None:
            assert not decision.admitted
            assert refused.retry_after == decision.retry_after
            return None
        assert decision.admitted
        assert ticket.trial is decision.trial
        return ticket

    @rule(ticket=consumes(tickets), counts=st.booleans(), then=st.sampled_from(["answered", "completed", "release"]))
    def outcome(self, ticket: Ticket | None, counts: bool, then: str) -> None:
        """A call ends: it fails (counting or not) or succeeds; a stale ticket changes neither count nor state."""
        if ticket is None:
            return
        breaker = self.breaker
        breaker._catch_up()  # a period end that is due applies first, whatever the command (it is no outcome)
        stale = ticket.generation != breaker._state.generation
        before = (breaker.state, breaker.consecutive_failures, breaker._state.generation)
        outcome = COMPLETED
        if then == "release":
            error = UpstreamConnectError("refused") if counts else UpstreamRejectedError("bad", upstream_status=400)
            outcome = classify(error)
        elif then == "answered":
            run_now(breaker.answered(ticket))
            outcome = CUT_SHORT
        run_now(breaker.settle(ticket, outcome))
        if stale:
            assert (breaker.state, breaker.consecutive_failures, breaker._state.generation) == before

    @rule(seconds=st.floats(min_value=0, max_value=50))
    def time_passes(self, seconds: float) -> None:
        """The injected clock moves on."""
        self.clock.advance(seconds)

    @rule(seconds=st.floats(min_value=0, max_value=50))
    def the_timer_fires(self, seconds: float) -> None:
        """The loop timer fires (perhaps early): the period ends exactly when the clock has reached its end."""
        self.clock.advance(seconds)
        until = self.breaker.open_until
        self.breaker._timer._fire()
        if until is not None:
            assert (self.breaker.state == "open") is (self.clock.now < until)

    @rule(mode=st.sampled_from(["open", "closed", "auto"]))
    def operator(self, mode: str) -> None:
        """An operator picks a mode."""
        {"open": self.breaker.force_open, "closed": self.breaker.force_closed, "auto": self.breaker.automatic}[mode]()

    @rule(started_ago=st.floats(min_value=0, max_value=30))
    def probe_succeeds(self, started_ago: float) -> None:
        """A probe that started some time ago succeeded."""
        self.breaker.probe_recovered(probe_started=self.clock.now - started_ago)

    @rule(open_for=st.floats(min_value=-1, max_value=100) | st.sampled_from([float("inf"), float("nan")]))
    def fleet_trips(self, open_for: float) -> None:
        """A peer's trip arrives, sometimes nonsense."""
        self.breaker.trip(open_for, 15.0)

    @rule()
    def fleet_closes(self) -> None:
        """A peer's trial succeeded."""
        self.breaker.close_from_fleet()

    @invariant()
    def reads_change_nothing(self) -> None:
        """Every query, asked twice, leaves the state and the published events as they were."""
        breaker, state, published = self.breaker, self.breaker._state, len(self.events)
        for model in MODELS:
            first = (breaker.state, breaker.snapshot(), breaker.decision(model).admitted, breaker.open_until)
            assert (breaker.state, breaker.snapshot(), breaker.decision(model).admitted, breaker.open_until) == first
        assert breaker._state is state
        assert len(self.events) == published

    @invariant()
    def one_state_at_a_time(self) -> None:
        """The effective state is exactly one of three, and the admission query agrees with it."""
        breaker = self.breaker
        state = breaker.state
        assert state in ("closed", "open", "half_open")
        admitted = breaker.decision().admitted
        if state == "open":
            assert not admitted
        elif state == "closed":
            assert admitted
        else:
            assert admitted is (breaker.trials_running < SLOTS or (breaker.open_until is None and admitted))

    @invariant()
    def trials_stay_within_the_slots(self) -> None:
        """Never more trials than half_open_calls; none outside half-open."""
        assert 0 <= self.breaker.trials_running <= SLOTS

    @invariant()
    def an_open_period_ends_on_time(self) -> None:
        """An automatic open period is never longer than reset_max, and reads half-open once its end has passed."""
        breaker, now = self.breaker, self.clock.now
        until = breaker._state.open_until
        if breaker.mode == "auto" and breaker._state.phase == "open" and until is not None:
            assert until - now <= 40.0 + 1e-9  # reset_max, up to float rounding of now + 40
            assert breaker.state == ("half_open" if now >= until else "open")


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_a_stale_trial_settled_after_a_due_period_end_counts_nothing() -> None:
    """Found by the machine: a peer's trip whose period has already ended is applied by the next command.

    That catch-up is the period's end, not the stale trial's outcome, so the invariant is checked after it.
    """
    machine = BreakerMachine()
    machine.fleet_trips(open_for=1e-9)
    machine.time_passes(1.0)
    ticket = machine.breaker.admit(MODELS[0])
    assert ticket.trial
    machine.fleet_trips(open_for=1e-199)  # a new period, over at once: the trial is stale
    machine.outcome(ticket=ticket, counts=False, then="answered")
