"""One route's health as one record: what picking, early refusal, /readyz, /status and the status page read.

Before this record, "up" was worked out in four places (the route pool, the status page, the
timeline and /readyz), each from the flag and the breaker in its own way. :func:`query` reads the
working flag and the breaker once, changes nothing, and names each meaning of "up" as a field
or property, so the consumers differ only in which question they ask:

- ``admits``: a call for the model would be admitted now (picking), and ``refusal``: why not (the
  pool's early refusal);
- ``up``: the route takes traffic now or is about to (working, breaker not open): the status
  page and the timeline, where a half-open route whose trial is running still counts as up;
- ``working`` and ``confirmed``: readiness (at least one route working; one known to be).

The pick and the early refusal run per request for every route, so :meth:`gateway.route_pool.Route.admits`
and :meth:`~gateway.route_pool.Route.refusal` read the same two facts as ``admits`` and ``refusal`` here
without building the record (see their docstrings for why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.breaker_state import Decision
from gateway.errors import AdmissionError, UpstreamNotWorkingError
from gateway.events import BreakerMode, BreakerState, WorkingMode

if TYPE_CHECKING:
    from gateway.breaker import CircuitBreaker
    from gateway.working import FlagState, WorkingFlag


@dataclass(frozen=True, slots=True)
class Health:
    """One route's health at one instant, for one model (None: any model)."""

    working: bool  # the flag's effective verdict: an operator's pin, else the probes'
    flag: FlagState  # unknown, checking, working, not_working
    flag_mode: WorkingMode
    confirmed: bool  # working and known to be (a probe passed, or pinned): what readiness waits for
    breaker: BreakerState  # the effective state; an open period that has ended reads half-open
    breaker_mode: BreakerMode
    decision: Decision  # the breaker's admission answer
    not_working: UpstreamNotWorkingError | None  # the flag's refusal, while not working

    @property
    def admits(self) -> bool:
        """A call would be admitted now: working, and the breaker admits it."""
        return self.working and self.decision.admitted

    @property
    def refusal(self) -> AdmissionError | None:
        """Why a call would be refused now (the working flag first), or None when it is admitted."""
        return self.not_working or self.decision.error

    @property
    def open(self) -> bool:
        """The breaker refuses every call for a while (open, or forced open by an operator)."""
        return self.breaker == "open" or self.breaker_mode == "forced_open"

    @property
    def up(self) -> bool:
        """Takes traffic now or is about to: working, and the breaker not open."""
        return self.working and not self.open

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker would admit a call; 0 when it admits now."""
        return self.decision.retry_after


def query(flag: WorkingFlag, breaker: CircuitBreaker, model: str | None = None) -> Health:
    """The health of the route with ``flag`` and ``breaker``, for ``model``; a pure read."""
    return Health(
        working=flag.working,
        flag=flag.state,
        flag_mode=flag.mode,
        confirmed=flag.confirmed_working,
        breaker=breaker.state,
        breaker_mode=breaker.mode,
        decision=breaker.decision(model),
        not_working=flag.admission_error(),
    )
