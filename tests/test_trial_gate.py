"""gateway/trial_gate.py: trial slots and a new half-open period."""

from __future__ import annotations

import pytest

from gateway.trial_gate import TrialGate


def test_slots_bound_concurrent_trials_and_a_neutral_end_frees_one() -> None:
    """At most ``slots`` trials run; a neutral end frees a slot."""
    gate = TrialGate(slots=2)
    gate.take()
    assert gate.free
    gate.take()
    assert not gate.free
    assert gate.running == 2
    gate.give_back()
    assert gate.free


def test_a_new_period_releases_the_slots_of_the_last_one() -> None:
    """A new half-open period starts with every slot free."""
    gate = TrialGate(slots=1)
    gate.take()
    gate.reset()
    assert gate.free
    assert gate.running == 0


def test_a_gate_without_slots_is_refused() -> None:
    """A half-open period needs at least one trial slot."""
    with pytest.raises(ValueError, match="at least one"):
        TrialGate(slots=0)
