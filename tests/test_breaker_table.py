"""gateway/breaker_table.py: one case per (phase, event) pair, then the model rule and the queries."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.breaker_state import (
    EVENTS,
    PHASES,
    CancelTimer,
    Effect,
    Event,
    Failure,
    FleetClose,
    FleetTrip,
    Limits,
    Neutral,
    Override,
    PeriodEnd,
    Phase,
    ProbeSuccess,
    Publish,
    RefuseModel,
    StartTimer,
    State,
    Success,
    SyncCounter,
    TrialAdmitted,
    decide,
    effective,
)
from gateway.breaker_table import describe, transition
from gateway.events import BreakerChanged, BreakerMode, BreakerState

L = Limits("r", reset_timeout=10.0, multiplier=2.0, reset_max=25.0, half_open_calls=2)
NOW = 100.0
START: dict[Phase, State] = {
    "closed": State(L, "closed", generation=1, duration=10.0, streak=frozenset({"m"})),
    "open": State(L, "open", generation=1, open_until=105.0, opened_at=95.0, duration=10.0),
    "half_open": State(L, "half_open", generation=1, opened_at=95.0, duration=10.0, trials=1),
    "forced_open": State(L, "forced_open", generation=1, duration=10.0),
    "forced_closed": State(L, "forced_closed", generation=1, duration=10.0),
}
EVENT: dict[type[Event], Event] = {
    Success: Success(1, "n"),
    Failure: Failure(1, tripped=True, model="m", cause="connect"),
    Neutral: Neutral(1, trial=True),
    PeriodEnd: PeriodEnd(),
    ProbeSuccess: ProbeSuccess(None),
    Override: Override("forced_open"),
    FleetTrip: FleetTrip(open_for=20.0, duration=12.0),
    FleetClose: FleetClose(),
    TrialAdmitted: TrialAdmitted(),
}


def changed(
    old: BreakerState, new: BreakerState, mode: BreakerMode = "auto", *, traffic: bool = False, fleet: bool = False
) -> Publish:
    """The announcement of one change of route r."""
    cause = "connect" if traffic and new == "open" else None  # a cause that may be the path's: the path cause too
    return Publish(
        BreakerChanged("r", old, new, mode, by_traffic=traffic, cause=cause, path_cause=cause, from_fleet=fleet)
    )


def moved(phase: Phase, **fields: object) -> State:
    """A state of generation 2 in ``phase``: what every change of phase gives (no trials, no streak)."""
    base = State(L, phase, generation=2, duration=10.0)
    return replace(base, **fields)  # type: ignore[arg-type]


def same(phase: Phase) -> tuple[State, tuple[Effect, ...]]:
    """Nothing changes."""
    return START[phase], ()


CASES: dict[tuple[Phase, type[Event]], tuple[State, tuple[Effect, ...]]] = {
    # closed: failures count, a trip opens (b1); operators and peers move it
    ("closed", Success): (replace(START["closed"], streak=frozenset(), last_ok="n"), ()),
    ("closed", Failure): (
        moved("open", open_until=110.0, opened_at=100.0, path_cause="connect"),
        (SyncCounter("open"), StartTimer(110.0), changed("closed", "open", traffic=True)),
    ),
    ("closed", Neutral): same("closed"),
    ("closed", PeriodEnd): same("closed"),
    ("closed", ProbeSuccess): same("closed"),
    ("closed", Override): (
        moved("forced_open"),
        (SyncCounter("closed"), CancelTimer(), changed("closed", "open", "forced_open")),
    ),
    ("closed", FleetTrip): (
        moved("open", open_until=120.0, opened_at=100.0, duration=12.0),
        (SyncCounter("open"), StartTimer(120.0), changed("closed", "open", fleet=True)),
    ),
    ("closed", FleetClose): same("closed"),
    ("closed", TrialAdmitted): same("closed"),
    # open: only time, a probe, operators and peers move it
    ("open", Success): same("open"),
    ("open", Failure): same("open"),
    ("open", Neutral): same("open"),
    ("open", PeriodEnd): (START["open"], (StartTimer(105.0),)),  # early (injected clock): re-armed
    ("open", ProbeSuccess): (
        moved("half_open", opened_at=95.0),
        (SyncCounter("half_open"), CancelTimer(), changed("open", "half_open")),
    ),
    ("open", Override): (moved("forced_open", opened_at=95.0), (SyncCounter("closed"), CancelTimer())),
    ("open", FleetTrip): (replace(START["open"], open_until=120.0, duration=12.0), (StartTimer(120.0),)),
    ("open", FleetClose): (
        moved("closed", opened_at=95.0),
        (SyncCounter("closed"), CancelTimer(), changed("open", "closed", fleet=True)),
    ),
    ("open", TrialAdmitted): same("open"),
    # half_open: the trials decide (b4, b5, b6)
    ("half_open", Success): (
        moved("closed", opened_at=95.0, last_ok="n"),
        (SyncCounter("closed"), CancelTimer(), changed("half_open", "closed", traffic=True)),
    ),
    ("half_open", Failure): (
        moved("open", open_until=120.0, opened_at=100.0, duration=20.0, path_cause="connect"),
        (SyncCounter("open"), StartTimer(120.0), changed("half_open", "open", traffic=True)),
    ),
    ("half_open", Neutral): (replace(START["half_open"], trials=0), ()),
    ("half_open", PeriodEnd): same("half_open"),
    ("half_open", ProbeSuccess): same("half_open"),
    ("half_open", Override): (
        moved("forced_open", opened_at=95.0),
        (SyncCounter("closed"), CancelTimer(), changed("half_open", "open", "forced_open")),
    ),
    ("half_open", FleetTrip): (
        moved("open", open_until=120.0, opened_at=100.0, duration=12.0),
        (SyncCounter("open"), StartTimer(120.0), changed("half_open", "open", fleet=True)),
    ),
    ("half_open", FleetClose): (
        moved("closed", opened_at=95.0),
        (SyncCounter("closed"), CancelTimer(), changed("half_open", "closed", fleet=True)),
    ),
    ("half_open", TrialAdmitted): (replace(START["half_open"], trials=2), ()),
    # forced_open: only an operator moves it (here: to the mode it is already in)
    **{("forced_open", event): same("forced_open") for event in EVENTS},
    # forced_closed: only an operator moves it
    **{("forced_closed", event): same("forced_closed") for event in EVENTS if event is not Override},
    ("forced_closed", Override): (
        moved("forced_open"),
        (SyncCounter("closed"), CancelTimer(), changed("closed", "open", "forced_open")),
    ),
}


def test_the_cases_cover_every_phase_and_event() -> None:
    """The table test has exactly one case per (phase, event) pair."""
    assert set(CASES) == {(phase, event) for phase in PHASES for event in EVENTS}


@pytest.mark.parametrize(("phase", "event"), list(CASES), ids=[f"{p}-{e.__name__}" for p, e in CASES])
def test_each_phase_and_event(phase: Phase, event: type[Event]) -> None:
    """One step from each phase for each event gives exactly the expected state and effects."""
    assert transition(START[phase], EVENT[event], NOW) == CASES[(phase, event)]


def test_describe_prints_one_row_per_pair() -> None:
    """describe() prints the table: a header and a row for each of the 45 pairs, each saying its step."""
    rows = describe().splitlines()
    assert len(rows) == 1 + len(PHASES) * len(EVENTS)
    assert "half_open      Failure        -> open, period grown (b5)" in rows


def test_a_due_period_end_is_applied_before_any_event() -> None:
    """An open period whose end has passed is ended first; an outcome of the old generation then counts for nothing."""
    due = replace(START["open"], open_until=NOW)
    ended = (SyncCounter("half_open"), CancelTimer(), changed("open", "half_open"))
    assert transition(due, PeriodEnd(), NOW) == (moved("half_open", opened_at=95.0), ended)
    assert transition(due, Failure(1, tripped=True, cause="connect"), NOW) == (
        moved("half_open", opened_at=95.0),
        ended,
    )
    state, effects = transition(due, TrialAdmitted(), NOW)
    assert (state.phase, state.trials, effects) == ("half_open", 1, ended)


@pytest.mark.parametrize("event", [Success(0), Failure(0, tripped=True, model="m"), Neutral(0, trial=True)])
def test_outcomes_of_an_older_generation_are_dropped(event: Event) -> None:
    """A ticket of generation 0 decides nothing in a half-open period of generation 1."""
    assert transition(START["half_open"], event, NOW) == same("half_open")


def test_a_peer_cannot_open_a_route_forever_or_shorten_it() -> None:
    """Non-finite or non-positive trips change nothing; a shorter one leaves a running period alone; caps apply."""
    for trip in (FleetTrip(float("inf"), 10.0), FleetTrip(5.0, float("nan")), FleetTrip(0.0, 10.0)):
        assert transition(START["closed"], trip, NOW) == same("closed")
    assert transition(START["open"], FleetTrip(3.0, 10.0), NOW) == same("open")
    state, _ = transition(START["closed"], FleetTrip(1e9, 1e9), NOW)
    assert (state.open_until, state.duration) == (NOW + 25.0, 25.0)


def test_a_probe_that_began_before_the_trip_does_not_end_the_period() -> None:
    """b3 only for probes that started after the period began."""
    assert transition(START["open"], ProbeSuccess(started=90.0), NOW) == same("open")


# -- a broken model must not cut off the others --------------------------------------------------


def failing(
    model: str | None, *, last_ok: str | None, streak: frozenset[str | None]
) -> tuple[State, tuple[Effect, ...]]:
    """The step for a tripping failure of ``model`` after a streak and the latest success's model."""
    state = replace(START["closed"], streak=streak, last_ok=last_ok)
    return transition(state, Failure(1, tripped=True, model=model, cause="connect"), NOW)


def test_a_streak_of_one_model_after_another_models_success_refuses_only_that_model() -> None:
    """Every failure from model m while model n answered last: m is refused for a period, the route stays closed."""
    state, effects = failing("m", last_ok="n", streak=frozenset({"m"}))
    assert effects == (SyncCounter("closed"), RefuseModel("m", NOW + 10.0))
    assert (state.phase, state.generation, state.refused, state.streak, state.last_ok) == (
        "closed",
        2,
        (("m", NOW + 10.0),),
        frozenset(),
        None,
    )
    refused = decide(state, NOW + 1.0, "m")
    assert (refused.admitted, refused.retry_after) == (False, 9.0)
    assert refused.error is not None
    assert refused.error.code == "circuit_open"
    assert "'m'" in str(refused.error)
    assert decide(state, NOW + 1.0, "n").admitted
    assert decide(state, NOW + 1.0).admitted
    assert decide(state, NOW + 10.0, "m").admitted  # the refusal ends on time without a step
    later, _ = transition(state, Neutral(2, trial=False), NOW + 10.0)
    assert later.refused == ()


@pytest.mark.parametrize(
    ("model", "last_ok", "streak"),
    [
        ("m", "n", frozenset({"n", "m"})),  # the streak spans models
        ("m", None, frozenset({"m"})),  # no other model is known to work
        ("m", "m", frozenset({"m"})),  # the model that failed is the one that worked last
        (None, "n", frozenset({None})),  # the model was not told
    ],
)
def test_otherwise_the_whole_route_opens(model: str | None, last_ok: str | None, streak: frozenset[str | None]) -> None:
    """Failures spanning models, unknown models, or no evidence that another model works: the route opens (b1)."""
    state, effects = failing(model, last_ok=last_ok, streak=streak)
    assert state.phase == "open"
    assert isinstance(effects[-1], Publish)


@pytest.mark.parametrize("phase", PHASES)
def test_queries_agree_with_the_phase(phase: Phase) -> None:
    """effective() and decide(): closed admits, open refuses with its rest, half-open admits trials up to the slots."""
    state = START[phase]
    decision = decide(state, NOW)
    expected = {"closed": True, "open": False, "half_open": True, "forced_open": False, "forced_closed": True}
    assert decision.admitted is expected[phase]
    assert decision.trial is (phase == "half_open")
    assert effective(state, NOW) == {"forced_open": "open", "forced_closed": "closed"}.get(phase, phase)
    if phase == "open":
        assert decision.retry_after == 5.0
    busy = decide(replace(START["half_open"], trials=2), NOW)
    assert (busy.admitted, busy.error is not None and busy.error.half_open) == (False, True)


# -- a trip is shared no wider than all of its failures ----------------------------------------------


def _trip(causes: list[str], *, success_after: int | None = None) -> tuple[State, BreakerChanged]:
    """The state and announcement after failures of ``causes`` (the last one trips), with an optional success
    after the first ``success_after`` of them."""
    state = State(L, "closed", generation=1, duration=10.0)
    for index, cause in enumerate(causes):
        if index == success_after:
            state, _ = transition(state, Success(1), NOW)
        state, effects = transition(state, Failure(1, tripped=index == len(causes) - 1, cause=cause), NOW)
    published = [effect.change for effect in effects if isinstance(effect, Publish)]
    assert (state.phase, [change.new for change in published]) == ("open", ["open"])
    return state, published[0]


def test_a_streak_with_a_path_cause_trips_with_that_path_cause() -> None:
    """Four connect errors and then a 5xx: the trip names the 5xx and the path's cause, so the fleet shares it only
    where that path is shared (the egress group), not upstream-wide on the strength of its last failure alone."""
    _, change = _trip(["connect", "connect", "connect", "connect", "http_5xx"])
    assert (change.cause, change.path_cause) == ("http_5xx", "connect")
    _, change = _trip(["http_5xx", "blocked", "timeout", "http_5xx"])
    assert (change.cause, change.path_cause) == ("http_5xx", "blocked")


def test_a_streak_of_outage_causes_has_no_path_cause() -> None:
    """Every failure said the upstream is down: the trip is the outage's, shared by its cause as before."""
    _, change = _trip(["timeout", "http_5xx", "interrupted", "http_5xx"])
    assert (change.cause, change.path_cause) == ("http_5xx", None)


def test_the_path_cause_lasts_until_the_route_works_again() -> None:
    """A success before the trip forgets it; a failed trial keeps it (the episode goes on); a trial that succeeds
    closes the route and clears it."""
    _, change = _trip(["connect", "http_5xx", "http_5xx"], success_after=1)
    assert change.path_cause is None
    opened, _ = _trip(["blocked", "blocked", "http_5xx"])
    trial, _ = transition(opened, PeriodEnd(), NOW + 10.0)
    trial, _ = transition(trial, TrialAdmitted(), NOW + 10.0)
    reopened, effects = transition(trial, Failure(trial.generation, tripped=True, cause="http_5xx"), NOW + 10.0)
    assert effects[-1] == Publish(
        BreakerChanged("r", "half_open", "open", "auto", by_traffic=True, cause="http_5xx", path_cause="blocked")
    )
    trial, _ = transition(reopened, PeriodEnd(), NOW + 40.0)
    trial, _ = transition(trial, TrialAdmitted(), NOW + 40.0)
    closed, _ = transition(trial, Success(trial.generation), NOW + 40.0)
    assert (closed.phase, closed.path_cause) == ("closed", None)


def test_a_peers_trip_starts_an_episode_without_this_processs_earlier_path_cause() -> None:
    """One connect error here (too few to trip), then a peer's outage trip: a failed trial later is the outage's."""
    state = State(L, "closed", generation=1, duration=10.0)
    state, _ = transition(state, Failure(1, tripped=False, cause="connect"), NOW)
    state, _ = transition(state, FleetTrip(open_for=10.0, duration=10.0), NOW)
    assert (state.phase, state.path_cause) == ("open", None)
    state, _ = transition(state, TrialAdmitted(), NOW + 10.0)
    _, effects = transition(state, Failure(state.generation, tripped=True, cause="http_5xx"), NOW + 10.0)
    assert effects[-1] == Publish(
        BreakerChanged("r", "half_open", "open", "auto", by_traffic=True, cause="http_5xx", path_cause=None)
    )
