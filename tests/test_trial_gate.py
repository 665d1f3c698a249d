"""gateway/trial_gate.py: trial slots, the fleet's permit and its deadline, a new half-open period."""

from __future__ import annotations

import pytest

from gateway.trial_gate import TrialGate
from tests.clock_support import FakeClock


def test_slots_bound_concurrent_trials_and_a_neutral_end_frees_one() -> None:
    gate = TrialGate(slots=2, clock=FakeClock())
    gate.take()
    assert gate.refusal() is None
    gate.take()
    assert gate.refusal() == "busy"
    gate.give_back()
    assert gate.refusal() is None


def test_a_new_period_releases_the_slots_of_the_last_one() -> None:
    gate = TrialGate(slots=1, clock=FakeClock())
    gate.take()
    gate.reset()
    assert gate.refusal() is None


def test_alone_a_process_is_its_own_permit_and_revoking_changes_nothing() -> None:
    gate = TrialGate(slots=1, clock=FakeClock())
    gate.revoke()
    gate.reset()
    assert gate.refusal() is None


def test_in_a_fleet_a_period_starts_without_a_permit_until_the_claim_is_won() -> None:
    gate = TrialGate(slots=1, clock=FakeClock())
    gate.needs_permit = True
    gate.reset()
    assert gate.refusal() == "no_permit"
    gate.permit()
    assert gate.refusal() is None
    gate.revoke()
    assert gate.refusal() == "no_permit"


def test_a_permit_ends_at_its_deadline_on_the_injected_clock() -> None:
    clock = FakeClock()
    gate = TrialGate(slots=1, clock=clock)
    gate.needs_permit = True
    gate.permit(until=clock() + 0.75)
    clock.advance(0.74)
    assert gate.refusal() is None
    clock.advance(0.01)
    assert gate.refusal() == "no_permit"


def test_no_permit_is_reported_before_busy() -> None:
    """A caller refused for both reasons is told another process holds the trial."""
    gate = TrialGate(slots=1, clock=FakeClock())
    gate.take()
    gate.needs_permit = True
    gate.revoke()
    assert gate.refusal() == "no_permit"


def test_a_gate_without_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one trial slot"):
        TrialGate(slots=0, clock=FakeClock())
