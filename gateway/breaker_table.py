"""The breaker's state machine as a pure table: ``transition(state, event, now) -> (state, effects)``.

No I/O, no clock, no aiobreaker: :mod:`gateway.breaker` feeds it events, then applies the
effects (timer, counter sync, the ``BreakerChanged`` to publish) after the step, so nobody
observes a half-done transition. ``print(describe())`` prints the table, one row per state.

Phases: ``closed``, ``open``, ``half_open``, ``forced_open`` and ``forced_closed``. There is no
separate ``disabled``: it would admit everything and count nothing, which is ``forced_closed``.
An ``open`` phase whose ``open_until`` has passed is half-open in effect: queries say so, and the
first event applies the pending period end before its own row (reads never change state).

Rules worth knowing: outcomes (success, failure, neutral) of a ticket from an older generation are
dropped; the aiobreaker counter (:mod:`gateway.breaker_counter`) decides whether a failure trips and
the event carries its verdict. A broken model must not cut off the others: when a trip would happen
but every failure of the streak came from one model while another model's success came last before
it, only that model is refused for an open period (``refused``), and the route stays closed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Final

from gateway.breaker_state import (
    EVENTS,
    PHASES,
    SHOWN,
    CancelTimer,
    Effect,
    Event,
    Failure,
    FleetClose,
    FleetTrip,
    Neutral,
    Override,
    PeriodEnd,
    Phase,
    ProbeSuccess,
    Publish,
    RefuseModel,
    StartTimer,
    State,
    Step,
    Success,
    SyncCounter,
    TrialAdmitted,
    due,
    mode_of,
)
from gateway.events import BreakerChanged, BreakerMode, BreakerState
from gateway.scope import UPSTREAM_CAUSES

_FORCED: Final[dict[BreakerMode, Phase]] = {
    "auto": "closed",
    "forced_open": "forced_open",
    "forced_closed": "forced_closed",
}


def _change(
    state: State,
    now: float,
    new: State,
    *,
    by_traffic: bool = False,
    cause: str | None = None,
    fleet: bool = False,
    counter: BreakerState | None = None,
) -> Step:
    """Move to ``new`` (a new generation): counter sync, timer, then the announcement, in that order.

    The path cause outlives open and half-open periods (their trials continue the failing episode) and
    ends when the route closes or an operator takes over.
    """
    path_cause = new.path_cause if new.phase in ("open", "half_open") else None
    new = replace(new, generation=state.generation + 1, trials=0, streak=frozenset(), path_cause=path_cause)
    effects: list[Effect] = [SyncCounter(counter or SHOWN[new.phase])]
    effects.append(StartTimer(new.open_until) if new.phase == "open" and new.open_until is not None else CancelTimer())
    old_state, new_state = SHOWN[state.phase], SHOWN[new.phase]
    if old_state != new_state:
        change = BreakerChanged(
            state.limits.name,
            old_state,
            new_state,
            mode_of(new),
            by_traffic=by_traffic,
            cause=cause if new_state == "open" else None,
            path_cause=path_cause if new_state == "open" and by_traffic else None,
            from_fleet=fleet,
        )
        effects.append(Publish(change))
    return new, tuple(effects)


def _stay(state: State, event: Any, now: float) -> Step:
    """nothing changes"""
    return state, ()


def _closed(state: State, now: float, **how: Any) -> Step:
    reset = replace(state, phase="closed", open_until=None, duration=state.limits.reset_timeout)
    return _change(state, now, reset, **how)


def _open(state: State, now: float, *, length: float, duration: float, **how: Any) -> Step:
    return _change(
        state, now, replace(state, phase="open", open_until=now + length, opened_at=now, duration=duration), **how
    )


def _half_open(state: State, now: float) -> Step:
    return _change(state, now, replace(state, phase="half_open", open_until=None))


def _success(state: State, event: Success, now: float) -> Step:
    """streak reset; the model is evidence"""
    last_ok = event.model or state.last_ok
    if not state.streak and last_ok == state.last_ok:
        return state, ()  # nothing to change: the common case, without the cost of a copy
    return replace(state, streak=frozenset(), path_cause=None, last_ok=last_ok), ()


def _path_cause(state: State, event: Failure) -> str | None:
    """The episode's path cause after ``event``: the first failure cause that may be one host's path."""
    return state.path_cause or (event.cause if event.cause and event.cause not in UPSTREAM_CAUSES else None)


def _failure(state: State, event: Failure, now: float) -> Step:
    """count; a trip opens the route, or refuses one model if the streak is its alone"""
    streak = state.streak | {event.model}
    path_cause = _path_cause(state, event)
    if not event.tripped:
        return replace(state, streak=streak, path_cause=path_cause), ()
    model = event.model
    if model is not None and streak == {model} and state.last_ok not in (None, model):
        until = now + state.duration
        refused = tuple(sorted({**dict(state.refused), model: until}.items()))
        kept = replace(
            state, generation=state.generation + 1, streak=frozenset(), path_cause=None, last_ok=None, refused=refused
        )
        return kept, (SyncCounter("closed"), RefuseModel(model, until))
    failing = replace(state, path_cause=path_cause)
    return _open(failing, now, length=state.duration, duration=state.duration, by_traffic=True, cause=event.cause)


def _trial_succeeded(state: State, event: Success, now: float) -> Step:
    """-> closed (b4)"""
    closed, effects = _closed(state, now, by_traffic=True)
    return replace(closed, last_ok=event.model or state.last_ok), effects


def _trial_failed(state: State, event: Failure, now: float) -> Step:
    """-> open, period grown (b5)"""
    grown = min(state.duration * state.limits.multiplier, state.limits.reset_max)
    failing = replace(state, path_cause=_path_cause(state, event))
    return _open(failing, now, length=grown, duration=grown, by_traffic=True, cause=event.cause, counter="open")


def _free_slot(state: State, event: Neutral, now: float) -> Step:
    """a trial frees its slot (b6)"""
    return (replace(state, trials=max(0, state.trials - 1)), ()) if event.trial else (state, ())


def _take_slot(state: State, event: TrialAdmitted, now: float) -> Step:
    """a trial takes a slot"""
    return replace(state, trials=min(state.trials + 1, state.limits.half_open_calls)), ()


def _period_end(state: State, event: PeriodEnd, now: float) -> Step:
    """-> half_open when due (b2), else re-arm"""
    if not due(state, now):
        return state, (StartTimer(state.open_until),) if state.open_until is not None else ()
    return _half_open(state, now)


def _probe_success(state: State, event: ProbeSuccess, now: float) -> Step:
    """-> half_open unless the probe began before the trip (b3)"""
    if event.started is not None and state.opened_at is not None and event.started < state.opened_at:
        return state, ()
    return _half_open(state, now)


def _override(state: State, event: Override, now: float) -> Step:
    """-> the mode's phase, fresh: no count, no growth, no refusals"""
    if event.mode == mode_of(state):
        return state, ()
    fresh = replace(
        state, phase=_FORCED[event.mode], open_until=None, duration=state.limits.reset_timeout, last_ok=None, refused=()
    )
    return _change(state, now, fresh, counter="closed")


def _fleet_trip(state: State, event: FleetTrip, now: float) -> Step:
    """-> open for the peer's rest (capped), or run on longer"""
    if not (math.isfinite(event.open_for) and math.isfinite(event.duration)) or event.open_for <= 0:
        return state, ()  # a peer (or Redis content) must never make a route open forever
    limits = state.limits
    open_for = min(event.open_for, limits.reset_max)
    duration = min(max(event.duration, limits.reset_timeout), limits.reset_max)
    if state.phase == "open" and state.open_until is not None:
        if state.open_until - now >= open_for:
            return state, ()  # already open at least as long
        longer = replace(state, open_until=now + open_for, duration=duration)
        return longer, (StartTimer(now + open_for),)
    # The peer's period is the fleet's episode: failures here too few to trip do not narrow its trials' trips.
    return _open(replace(state, path_cause=None), now, length=open_for, duration=duration, fleet=True)


def _fleet_close(state: State, event: FleetClose, now: float) -> Step:
    """-> closed"""
    return _closed(state, now, fleet=True)


_AUTO_ONLY: Final = {Override: _override}
TABLE: Final[dict[Phase, dict[type[Any], Any]]] = {
    "closed": {Success: _success, Failure: _failure, Override: _override, FleetTrip: _fleet_trip},
    "open": {
        PeriodEnd: _period_end,
        ProbeSuccess: _probe_success,
        Override: _override,
        FleetTrip: _fleet_trip,
        FleetClose: _fleet_close,
    },
    "half_open": {
        Success: _trial_succeeded,
        Failure: _trial_failed,
        Neutral: _free_slot,
        Override: _override,
        FleetTrip: _fleet_trip,
        FleetClose: _fleet_close,
        TrialAdmitted: _take_slot,
    },
    "forced_open": _AUTO_ONLY,
    "forced_closed": _AUTO_ONLY,
}  # every (phase, event) pair not listed: _stay


def transition(state: State, event: Event, now: float) -> Step:
    """One step: prune ended model refusals, apply a due period end, drop stale outcomes, then the row."""
    if state.refused and any(until <= now for _, until in state.refused):
        state = replace(state, refused=tuple((m, until) for m, until in state.refused if until > now))
    first: tuple[Effect, ...] = ()
    if due(state, now):
        state, first = _half_open(state, now)
        if isinstance(event, PeriodEnd):
            return state, first
    if isinstance(event, Success | Failure | Neutral) and event.generation != state.generation:
        return state, first  # a ticket from an older period never decides this one
    state, effects = TABLE[state.phase].get(type(event), _stay)(state, event, now)
    return state, first + effects


def describe() -> str:
    """The table as text: one line per phase and event."""
    rows = [f"{'phase':<14} {'event':<14} step"]
    for phase in PHASES:
        for event in EVENTS:
            step = TABLE[phase].get(event, _stay)
            rows.append(f"{phase:<14} {event.__name__:<14} {(step.__doc__ or '').strip()}")
    return "\n".join(rows)
