"""Who may be a half-open trial: a fixed number of slots, and (in a fleet) this process's permit.

The breaker decides *when* it is half-open; this keeps *who gets through* then. At most
``slots`` trials run at once. While :attr:`TrialGate.needs_permit` is set (shared state is
up), a trial also needs the permit that the fleet's single-flight claim grants; a permit may
carry a deadline on the injected clock, because the claim behind it lapses in Redis after its
TTL whether or not this process noticed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Refusal = Literal["no_permit", "busy"]


class TrialGate:
    """Half-open admission for one breaker; :meth:`reset` starts a new half-open period."""

    def __init__(self, *, slots: int, clock: Callable[[], float]) -> None:
        if slots < 1:
            raise ValueError("a half-open period needs at least one trial slot")
        self._slots = slots
        self._clock = clock
        self._taken = 0
        self.needs_permit = False  # set by the fleet while shared state is up
        self._permitted = True
        self._permit_until: float | None = None

    def refusal(self) -> Refusal | None:
        """Why the next caller would not be a trial now, or None if it would."""
        if not self._has_permit():
            return "no_permit"
        if self._taken >= self._slots:
            return "busy"
        return None

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
        self._permitted, self._permit_until = not self.needs_permit, None

    def permit(self, *, until: float | None = None) -> None:
        """This process won the fleet's claim on the trial (until a clock reading, if given)."""
        self._permitted, self._permit_until = True, until

    def revoke(self) -> None:
        """The claim lapsed or was given back; without shared state a process keeps its own permit."""
        if self.needs_permit:
            self._permitted, self._permit_until = False, None

    def _has_permit(self) -> bool:
        until = self._permit_until
        return self._permitted and (until is None or self._clock() < until)
