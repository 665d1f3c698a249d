"""The breaker's state, the events a step takes, the effects it returns, and the queries reads make.

Frozen values and pure functions only: :mod:`gateway.breaker_table` is the step over them and
:mod:`gateway.breaker` the shell that feeds it events and applies its effects. Queries change
nothing: an open period whose end has passed reads as half-open until an event applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from gateway.errors import CircuitOpenError
from gateway.events import BreakerChanged, BreakerMode, BreakerState

Phase = Literal["closed", "open", "half_open", "forced_open", "forced_closed"]
PHASES: Final[tuple[Phase, ...]] = ("closed", "open", "half_open", "forced_open", "forced_closed")
# A trial is in flight and its length is unknown; refusals are cheap, so ask for a short wait.
HALF_OPEN_BUSY_RETRY_AFTER: Final = 1.0
SHOWN: Final[dict[Phase, BreakerState]] = {
    "closed": "closed",
    "open": "open",
    "half_open": "half_open",
    "forced_open": "open",
    "forced_closed": "closed",
}


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings a step needs: the name (for messages), period lengths, trial slots."""

    name: str = "flowgpt"
    reset_timeout: float = 30.0
    multiplier: float = 1.0
    reset_max: float = 300.0
    half_open_calls: int = 1


@dataclass(frozen=True, slots=True)
class State:
    """Everything the breaker decides by; ``refused`` maps a model to the end of its refusal."""

    limits: Limits
    phase: Phase = "closed"
    generation: int = 0  # bumped on every change of phase; outcomes of older tickets are dropped
    open_until: float | None = None
    opened_at: float | None = None  # when the last open period began (older probes are ignored)
    duration: float = 30.0  # of the current open period, or of the last one (growth)
    trials: int = 0  # trial calls running in this half-open period
    streak: frozenset[str | None] = frozenset()  # models of the current failure streak (None: not told)
    # The first failure cause since the route last worked that may be one host's path (gateway.scope); None:
    # every one said the upstream itself is down. A trip carries it, so the fleet shares the trip no wider
    # than all its failures; kept through open and half-open periods, cleared when the route closes, an
    # operator forces a mode, or a peer's trip starts the fleet's own episode.
    path_cause: str | None = None
    last_ok: str | None = None  # model of the latest success: evidence that other models are served
    refused: tuple[tuple[str, float], ...] = ()


def initial(limits: Limits) -> State:
    """A closed breaker with a fresh period length."""
    return State(limits, duration=limits.reset_timeout)


@dataclass(slots=True)
class Ticket:
    """One admitted call: its generation, whether it holds a trial slot, and its model."""

    generation: int
    trial: bool
    counted: bool = True  # False in forced-closed mode: nothing is counted
    model: str | None = None


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Success:
    """A counted call succeeded (a trial's first token, or a clean end)."""

    generation: int
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A counted call failed; ``tripped``: the counter reached its limit (or a trial failed)."""

    generation: int
    tripped: bool
    model: str | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class Neutral:
    """A call ended without deciding anything (or after it did): a trial frees its slot."""

    generation: int
    trial: bool


@dataclass(frozen=True, slots=True)
class PeriodEnd:
    """The open period's timer fired (it may be early on an injected clock)."""


@dataclass(frozen=True, slots=True)
class ProbeSuccess:
    """A health probe that began at ``started`` (None: unknown) succeeded."""

    started: float | None = None


@dataclass(frozen=True, slots=True)
class Override:
    """An operator chose a mode."""

    mode: BreakerMode


@dataclass(frozen=True, slots=True)
class FleetTrip:
    """Another process opened the route for ``open_for`` s; ``duration`` is its period length."""

    open_for: float
    duration: float


@dataclass(frozen=True, slots=True)
class FleetClose:
    """Another process's trial succeeded."""


@dataclass(frozen=True, slots=True)
class TrialAdmitted:
    """A caller was admitted as a half-open trial (takes a slot)."""


Event = Success | Failure | Neutral | PeriodEnd | ProbeSuccess | Override | FleetTrip | FleetClose | TrialAdmitted
EVENTS: Final = (Success, Failure, Neutral, PeriodEnd, ProbeSuccess, Override, FleetTrip, FleetClose, TrialAdmitted)

# -- effects ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Arm (or re-arm) the period timer to fire at ``until``."""

    until: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """No period runs: disarm the timer."""


@dataclass(frozen=True, slots=True)
class SyncCounter:
    """Bring aiobreaker's state to ``to`` (``closed`` also zeroes its count)."""

    to: BreakerState


@dataclass(frozen=True, slots=True)
class Publish:
    """Announce a change of the effective state (always the step's last effect)."""

    change: BreakerChanged


@dataclass(frozen=True, slots=True)
class RefuseModel:
    """One model is refused on this route until ``until``; the route stays closed."""

    model: str
    until: float


Effect = StartTimer | CancelTimer | SyncCounter | Publish | RefuseModel
Step = tuple[State, tuple[Effect, ...]]


# -- queries ------------------------------------------------------------------------------------


def due(state: State, now: float) -> bool:
    """An automatic open period whose end has passed (half-open in effect)."""
    return state.phase == "open" and state.open_until is not None and now >= state.open_until


def effective(state: State, now: float) -> BreakerState:
    """The state as callers see it: forced modes decide it; a due open period reads half-open."""
    return "half_open" if due(state, now) else SHOWN[state.phase]


def mode_of(state: State) -> BreakerMode:
    """``auto`` or the operator's forced mode."""
    return (
        "forced_open" if state.phase == "forced_open" else "forced_closed" if state.phase == "forced_closed" else "auto"
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a call would be admitted now, as a trial or not, else the error to raise."""

    admitted: bool
    trial: bool = False
    error: CircuitOpenError | None = None

    @property
    def retry_after(self) -> float:
        """Seconds until a call would be admitted; 0 when it is now."""
        return 0.0 if self.error is None or self.error.retry_after is None else self.error.retry_after


_ADMITTED: Final = Decision(True)
_TRIAL: Final = Decision(True, trial=True)


def _refuse(message: str, retry_after: float, *, half_open: bool = False) -> Decision:
    return Decision(False, error=CircuitOpenError(message, retry_after=retry_after, half_open=half_open))


def decide(state: State, now: float, model: str | None = None) -> Decision:
    """The admission answer for a call for ``model`` (None: any model) at ``now``; changes nothing."""
    if state.phase == "forced_closed" or (state.phase == "closed" and not state.refused):
        return _ADMITTED  # the hot path: every pick asks every route
    name = state.limits.name
    if state.phase == "forced_open":
        return _refuse(f"circuit breaker {name!r} is forced open by an operator", state.duration)
    shown = effective(state, now)
    if shown == "open":
        left = max(0.0, (state.open_until or now) - now)
        return _refuse(f"circuit breaker {name!r} is open; retry in {math.ceil(left)} s", left)
    trials = 0 if due(state, now) else state.trials
    if shown == "half_open" and trials >= state.limits.half_open_calls:
        message = f"circuit breaker {name!r} is half-open and its trial call is in progress"
        return _refuse(message, HALF_OPEN_BUSY_RETRY_AFTER, half_open=True)
    until = dict(state.refused).get(model, 0.0) if model is not None else 0.0
    if until > now:
        left = until - now
        return _refuse(
            f"circuit breaker {name!r} refuses model {model!r} (it keeps failing); retry in {math.ceil(left)} s", left
        )
    return _TRIAL if shown == "half_open" else _ADMITTED
