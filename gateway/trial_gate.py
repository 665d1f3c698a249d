"""Who may be a half-open trial: a fixed number of slots per half-open period.

The breaker decides *when* it is half-open; this keeps *how many* trials run then. Each
process decides its own trials, in a fleet too: what it learns from peers (a close) only
ends the period sooner.
"""

from __future__ import annotations


class TrialGate:
    """Half-open admission for one breaker; :meth:`reset` starts a new half-open period."""

    def __init__(self, *, slots: int) -> None:
        if slots < 1:
            raise ValueError("a half-open period needs at least one trial slot")
        self._slots = slots
        self._taken = 0

    @property
    def free(self) -> bool:
        """Whether the next caller would be a trial now."""
        return self._taken < self._slots

    @property
    def running(self) -> int:
        """Trial calls of the current half-open period in flight."""
        return self._taken

    def take(self) -> None:
        """A trial call was admitted."""
        self._taken += 1

    def give_back(self) -> None:
        """A trial call of the current period ended without deciding it (neutral outcome)."""
        self._taken -= 1

    def reset(self) -> None:
        """A new half-open period: slots of an earlier one are released into that one, not this."""
        self._taken = 0
