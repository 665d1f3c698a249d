"""The breaker shell through its real interface (admit, failed, answered, completed, release): aiobreaker's flaws contained."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, NoReturn, Self, TypeVar

import pytest

from gateway.breaker import HALF_OPEN_BUSY_RETRY_AFTER, BreakerState, CircuitBreaker, Ticket
from gateway.errors import (
    CircuitOpenError,
    InvalidRequestError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamInterruptedError,
)
from gateway.events import BreakerChanged, EventBus
from gateway.outcome import COMPLETED, CUT_SHORT, classify
from tests.clock_support import FakeClock

UTCNOW_DEPRECATION = (
    "datetime.datetime.utcnow() is deprecated and scheduled for removal in a future version. "
    "Use timezone-aware objects to represent datetimes in UTC: datetime.datetime.now(datetime.UTC)."
)


class Recorder:
    """Subscribes to BreakerChanged and keeps every transition, and the trips live traffic caused."""

    def __init__(self) -> None:
        self.changes: list[tuple[BreakerState, BreakerState]] = []
        self.opened: list[None] = []

    def breaker_changed(self, event: BreakerChanged) -> None:
        self.changes.append((event.old, event.new))
        if event.new == "open" and event.by_traffic:
            self.opened.append(None)


class _DeprecatedUtcnow(datetime):
    """A datetime whose utcnow() warns exactly as Python 3.12+ does."""

    @classmethod
    def utcnow(cls) -> Self:
        warnings.warn(UTCNOW_DEPRECATION, DeprecationWarning, stacklevel=2)
        return super().utcnow()


BreakerFactory = Callable[..., CircuitBreaker]


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    """A fake monotonic clock."""
    return FakeClock()


@pytest.fixture(name="recorder")
def recorder_fixture() -> Recorder:
    """A recorder subscribed to the breaker's events."""
    return Recorder()


@pytest.fixture(name="opened")
def opened_fixture(recorder: Recorder) -> list[None]:
    """One entry per trip caused by live traffic."""
    return recorder.opened


@pytest.fixture(name="events")
def events_fixture(recorder: Recorder) -> EventBus:
    """An event bus the recorder listens on."""
    bus = EventBus()
    bus.subscribe(BreakerChanged, recorder.breaker_changed)
    return bus


@pytest.fixture(name="make_breaker")
def make_breaker_fixture(clock: FakeClock, events: EventBus) -> BreakerFactory:
    """Build breakers wired to the fake clock and the recorder's event bus."""

    def factory(**overrides: Any) -> CircuitBreaker:
        options: dict[str, Any] = {"fail_max": 2, "reset_timeout": 30.0, "clock": clock, "events": events}
        return CircuitBreaker(**{**options, **overrides})

    return factory


@pytest.fixture(name="breaker")
def breaker_fixture(make_breaker: BreakerFactory) -> CircuitBreaker:
    """A breaker that trips after two failures and stays open 30 s."""
    return make_breaker()


@pytest.fixture(name="local_tz", params=["Asia/Tokyo", "America/New_York"])
def local_tz_fixture(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the process in a non-UTC time zone; restore it afterwards."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield str(request.param)
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


@pytest.fixture(name="utcnow_warns")
def utcnow_warns_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make aiobreaker's utcnow() emit the 3.12+ DeprecationWarning, also on older Pythons."""
    source: type[datetime] = datetime
    if sys.version_info < (3, 12):
        monkeypatch.setattr("aiobreaker.circuitbreaker.datetime", _DeprecatedUtcnow)
        source = _DeprecatedUtcnow
    with pytest.warns(DeprecationWarning, match=r"datetime\.datetime\.utcnow"):
        source.utcnow()


T = TypeVar("T")


async def guarded(breaker: CircuitBreaker, fn: Callable[[], Awaitable[T]], *, defer_success: bool = False) -> T:
    """One call as the upstream service makes it: admit, run, tell the outcome, release the ticket.

    ``defer_success`` leaves a success to the caller's own ``completed`` (a stream that is still being read).
    """
    ticket = breaker.admit()
    outcome = CUT_SHORT
    try:
        try:
            result = await fn()
        except BaseException as error:
            outcome = classify(error)
            raise  # the original error, also for the call that tripped the breaker
        if ticket.trial:
            await breaker.answered(ticket)
        elif not defer_success:
            outcome = COMPLETED
        return result
    finally:
        await breaker.settle(ticket, outcome)


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The state read afresh (mypy would otherwise keep a narrowed property across awaits)."""
    return breaker.state


async def ok() -> str:
    return "ok"


async def fail() -> NoReturn:
    raise UpstreamConnectError("connection refused")


async def trip(breaker: CircuitBreaker, times: int = 2) -> None:
    for _ in range(times):
        with pytest.raises(UpstreamConnectError):
            await guarded(breaker, fail)


async def stream_broke(
    breaker: CircuitBreaker, ticket: Ticket | None = None, error: UpstreamError | None = None
) -> None:
    """A stream admitted with ``ticket`` (a fresh one when None) broke after its first token."""
    if ticket is None:
        ticket = breaker.admit()
    await breaker.settle(ticket, classify(error or UpstreamInterruptedError("the stream broke")))


async def start_a_hanging_call(breaker: CircuitBreaker) -> asyncio.Task[str]:
    """A guarded call that has been admitted and never finishes."""
    started = asyncio.Event()

    async def hang() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(guarded(breaker, hang))
    await started.wait()
    return task


async def cancel(task: asyncio.Task[str]) -> None:
    """Cancel a hanging call (a client that went away) and wait until it has ended."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def cancel_a_hanging_call(breaker: CircuitBreaker) -> None:
    """Start a guarded call that never finishes, then cancel it."""
    await cancel(await start_a_hanging_call(breaker))


async def reach_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Trip the breaker, wait out the open period and run one trial that hangs, then cancel it."""
    await trip(breaker)
    clock.advance(breaker.current_open_duration)
    await cancel_a_hanging_call(breaker)
    assert state_of(breaker) == "half_open"


# -- the aiobreaker flaws, one test (or two) each ---------------------------------------------


async def test_int_timings_are_accepted_and_trip(clock: FakeClock) -> None:
    """Int timings (aiobreaker fails on a non-timedelta only when it trips) work through a trip and recovery."""
    breaker = CircuitBreaker(fail_max=2, reset_timeout=30, reset_multiplier=2, reset_max=300, clock=clock)
    await trip(breaker)
    assert state_of(breaker) == "open"
    assert breaker.retry_after() == 30.0
    clock.advance(30)
    assert await guarded(breaker, ok) == "ok"
    assert state_of(breaker) == "closed"


async def test_guards_the_coroutine_that_opens_a_stream_and_stream_failures_trip(
    breaker: CircuitBreaker, opened: list[None]
) -> None:
    """A stream is guarded at its opening step; mid-stream breaks reported with failed() trip it."""

    async def broken_stream() -> AsyncIterator[str]:
        yield "Hel"
        raise UpstreamInterruptedError("the stream broke after it started")

    async def open_stream() -> AsyncIterator[str]:
        return broken_stream()

    # Two concurrent streams open fine (successes), then both break mid-way.
    tickets = [breaker.admit(), breaker.admit()]
    streams = [await guarded(breaker, open_stream), await guarded(breaker, open_stream)]
    assert breaker.consecutive_failures == 0
    for failures, (ticket, stream) in enumerate(zip(tickets, streams, strict=True), start=1):
        with pytest.raises(UpstreamInterruptedError) as exc_info:
            _ = [text async for text in stream]
        await stream_broke(breaker, ticket, exc_info.value)
        assert breaker.consecutive_failures == failures
    assert state_of(breaker) == "open"
    assert opened == [None]


async def test_deferred_success_lets_streams_that_always_break_trip_it(breaker: CircuitBreaker) -> None:
    """With defer_success, opened-then-broken streams count as consecutive failures and trip the breaker."""

    async def open_stream() -> str:
        return "first token"

    for _ in range(2):  # fail_max of the fixture breaker
        assert await guarded(breaker, open_stream, defer_success=True) == "first token"
        await stream_broke(breaker)
    assert state_of(breaker) == "open"


async def test_deferred_success_counts_when_the_stream_ends(breaker: CircuitBreaker) -> None:
    """A deferred success recorded at the end of a stream resets the failure count."""

    async def open_stream() -> str:
        return "first token"

    await stream_broke(breaker)
    ticket = breaker.admit()
    await guarded(breaker, open_stream, defer_success=True)
    assert breaker.consecutive_failures == 1
    await breaker.settle(ticket, COMPLETED)
    assert breaker.consecutive_failures == 0


async def test_a_ticket_released_without_an_outcome_counts_nothing(breaker: CircuitBreaker) -> None:
    """Only a failure or a completion counts: a call settled cut short (a stream object made, never read) is neutral."""
    await stream_broke(breaker)
    for _ in range(5):
        await breaker.settle(breaker.admit(), CUT_SHORT)
    assert (state_of(breaker), breaker.consecutive_failures) == ("closed", 1)


async def test_half_open_admits_a_single_trial(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Five concurrent calls after the open period: one reaches fn, four get half_open_busy."""
    await trip(breaker)
    clock.advance(30)
    release = asyncio.Event()
    reached = 0

    async def trial() -> str:
        nonlocal reached
        reached += 1
        await release.wait()
        return "ok"

    tasks = [asyncio.create_task(guarded(breaker, trial)) for _ in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert reached == 1
    assert breaker.retry_after() == HALF_OPEN_BUSY_RETRY_AFTER
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, CircuitOpenError)]
    assert results.count("ok") == 1
    assert len(refused) == 4
    assert all(r.code == "half_open_busy" and r.half_open for r in refused)
    assert all(r.retry_after == HALF_OPEN_BUSY_RETRY_AFTER for r in refused)
    assert state_of(breaker) == "closed"


async def test_half_open_calls_sets_the_number_of_trials(make_breaker: BreakerFactory, clock: FakeClock) -> None:
    """With half_open_calls=2, two concurrent trials reach fn and the third is refused."""
    breaker = make_breaker(half_open_calls=2)
    await trip(breaker)
    clock.advance(30)
    release = asyncio.Event()

    async def trial() -> str:
        await release.wait()
        return "ok"

    first, second = asyncio.create_task(guarded(breaker, trial)), asyncio.create_task(guarded(breaker, trial))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError) as exc_info:
        await guarded(breaker, trial)
    assert exc_info.value.half_open
    release.set()
    assert list(await asyncio.gather(first, second)) == ["ok", "ok"]


async def test_only_consecutive_failures_trip(make_breaker: BreakerFactory) -> None:
    """fail_max counts consecutive failures: a success in between resets the count."""
    breaker = make_breaker(fail_max=3)
    await trip(breaker, 2)
    assert breaker.consecutive_failures == 2
    assert await guarded(breaker, ok) == "ok"
    assert breaker.consecutive_failures == 0
    await trip(breaker, 2)
    assert state_of(breaker) == "closed"
    await trip(breaker, 1)
    assert state_of(breaker) == "open"


async def test_non_upstream_errors_do_not_count(make_breaker: BreakerFactory) -> None:
    """A non-UpstreamError is neutral: never a failure, and not the success aiobreaker would make of it."""
    breaker = make_breaker(fail_max=3)

    async def bad_request() -> NoReturn:
        raise InvalidRequestError("the prompt is empty")

    async def bug() -> NoReturn:
        raise ValueError("a bug in the caller")

    await trip(breaker, 2)
    for fn in (bad_request, bug, bad_request, bug):
        with pytest.raises((InvalidRequestError, ValueError)):
            await guarded(breaker, fn)
    assert state_of(breaker) == "closed"
    assert breaker.consecutive_failures == 2


async def test_a_trial_ending_in_a_gateway_error_decides_nothing(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A trial that ends in a non-upstream error (a bug, a closed session) keeps half-open and frees the trial."""
    await trip(breaker)
    clock.advance(30)

    async def bug() -> NoReturn:
        raise RuntimeError("Session is closed")

    with pytest.raises(RuntimeError):
        await guarded(breaker, bug)
    assert state_of(breaker) == "half_open"
    assert breaker.decision().error is None  # the next caller gets the trial


async def test_cancelled_call_is_neither_failure_nor_success(make_breaker: BreakerFactory) -> None:
    """A cancelled call (client disconnect) leaves the count as it was: no trip, no reset."""
    breaker = make_breaker(fail_max=3)
    await trip(breaker, 2)
    await cancel_a_hanging_call(breaker)
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 2)
    await trip(breaker, 1)
    assert state_of(breaker) == "open"


async def test_cancelled_trial_keeps_half_open_and_frees_the_slot(
    breaker: CircuitBreaker, clock: FakeClock, recorder: Recorder
) -> None:
    """Cancelling the half-open trial neither closes nor re-opens, and the next caller gets the slot."""
    await trip(breaker)
    clock.advance(30)
    trial = await start_a_hanging_call(breaker)
    with pytest.raises(CircuitOpenError):
        await guarded(breaker, ok)
    await cancel(trial)
    assert state_of(breaker) == "half_open"
    assert recorder.changes == [("closed", "open"), ("open", "half_open")]
    assert await guarded(breaker, ok) == "ok"
    assert state_of(breaker) == "closed"


async def test_tripping_call_raises_the_original_error(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """The call that trips gets its own UpstreamError (cause and context intact), never CircuitBreakerError."""
    root = OSError("connection reset")
    error = UpstreamConnectError("connect failed")

    async def fail_with_cause() -> NoReturn:
        raise error from root

    with pytest.raises(UpstreamConnectError):
        await guarded(breaker, fail)
    with pytest.raises(UpstreamConnectError) as exc_info:
        await guarded(breaker, fail_with_cause)
    assert exc_info.value is error
    assert error.__cause__ is root
    assert error.__context__ is None
    assert not [f for f in traceback.extract_tb(error.__traceback__) if "aiobreaker" in f.filename]
    assert state_of(breaker) == "open"
    # The re-open from a failed trial is aiobreaker's other CircuitBreakerError site.
    clock.advance(30)
    with pytest.raises(UpstreamConnectError):
        await guarded(breaker, fail)
    assert state_of(breaker) == "open"


async def test_retry_after_uses_the_injected_clock_in_non_utc_zones(
    local_tz: str, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """On a non-UTC host retry_after is the monotonic time left, and the breaker re-admits on time."""
    assert datetime.now().astimezone().utcoffset() != timedelta(0), local_tz
    await trip(breaker)
    assert breaker.open_until == 1030.0
    clock.advance(12.5)
    assert breaker.retry_after() == 17.5
    with pytest.raises(CircuitOpenError) as exc_info:
        await guarded(breaker, ok)
    assert exc_info.value.retry_after == 17.5
    clock.advance(17.5)
    assert breaker.retry_after() == 0.0
    assert await guarded(breaker, ok) == "ok"


@pytest.mark.usefixtures("utcnow_warns")
async def test_opens_despite_utcnow_deprecation_under_pytest_config(breaker: CircuitBreaker) -> None:
    """With pytest's filterwarnings (error + the aiobreaker ignore) the utcnow warning does not stop opening."""
    await trip(breaker)
    assert state_of(breaker) == "open"


@pytest.mark.usefixtures("utcnow_warns")
async def test_opens_despite_utcnow_deprecation_with_all_warnings_errors(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Even with every warning an error (-W error, no ignore), the breaker opens and re-opens."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await trip(breaker)
        assert state_of(breaker) == "open"
        clock.advance(30)
        with pytest.raises(UpstreamConnectError):
            await guarded(breaker, fail)
        assert state_of(breaker) == "open"


async def test_error_messages_are_clean(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Refusals carry a readable message and code (aiobreaker's error prints a tuple)."""
    await trip(breaker)
    with pytest.raises(CircuitOpenError) as open_info:
        await guarded(breaker, ok)
    assert str(open_info.value) == "circuit breaker 'flowgpt' is open; retry in 30 s"
    assert open_info.value.code == "circuit_open"
    clock.advance(30)
    task = asyncio.create_task(guarded(breaker, asyncio.Event().wait))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError) as busy_info:
        await guarded(breaker, ok)
    assert str(busy_info.value) == "circuit breaker 'flowgpt' is half-open and its trial call is in progress"
    task.cancel()
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as forced_info:
        await guarded(breaker, ok)
    assert str(forced_info.value) == "circuit breaker 'flowgpt' is forced open by an operator"
    for info in (open_info, busy_info, forced_info):
        assert not str(info.value).startswith("(")
    with pytest.raises(asyncio.CancelledError):
        await task


# -- growth, control, events, snapshot -----------------------------------------------------------


async def test_open_duration_grows_per_failed_trial_up_to_the_cap(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    """Each failed trial multiplies the open period, capped at reset_max; a close resets it."""
    breaker = make_breaker(reset_timeout=10.0, reset_multiplier=2.0, reset_max=35.0)
    await trip(breaker)
    durations = [breaker.current_open_duration]
    for _ in range(3):
        clock.advance(breaker.retry_after())
        with pytest.raises(UpstreamConnectError):
            await guarded(breaker, fail)
        assert breaker.open_until == clock.now + breaker.current_open_duration
        durations.append(breaker.current_open_duration)
    assert durations == [10.0, 20.0, 35.0, 35.0]
    clock.advance(35.0)
    assert await guarded(breaker, ok) == "ok"
    assert breaker.current_open_duration == 10.0
    await trip(breaker)
    assert breaker.retry_after() == 10.0


async def test_forced_open_refuses_everything(breaker: CircuitBreaker, recorder: Recorder, opened: list[None]) -> None:
    """forced_open refuses every call without calling fn, announces the change, and is not a traffic trip."""
    reached = False

    async def upstream() -> str:
        nonlocal reached
        reached = True
        return "ok"

    breaker.force_open()
    with pytest.raises(CircuitOpenError) as exc_info:
        await guarded(breaker, upstream)
    assert not reached
    assert exc_info.value.retry_after == 30.0
    assert (breaker.state, breaker.mode, breaker.open_until) == ("open", "forced_open", None)
    await stream_broke(breaker, Ticket(0, trial=False), UpstreamConnectError("ignored"))
    assert breaker.consecutive_failures == 0
    assert recorder.changes == [("closed", "open")]
    assert opened == []


async def test_forced_closed_admits_everything_and_never_trips(
    breaker: CircuitBreaker, clock: FakeClock, recorder: Recorder
) -> None:
    """forced_closed closes an open breaker, admits every call and counts no failure."""
    await trip(breaker)
    breaker.force_closed()
    assert (breaker.state, breaker.mode) == ("closed", "forced_closed")
    await trip(breaker, 10)
    await stream_broke(breaker)
    assert (breaker.state, breaker.consecutive_failures, breaker.retry_after()) == ("closed", 0, 0.0)
    assert recorder.changes == [("closed", "open"), ("open", "closed")]


async def test_automatic_resumes_closed_with_a_fresh_count(breaker: CircuitBreaker, recorder: Recorder) -> None:
    """Leaving a forced mode returns to closed, counting from zero."""
    await trip(breaker, 1)
    breaker.force_open()
    breaker.automatic()
    assert (breaker.state, breaker.mode, breaker.consecutive_failures) == ("closed", "auto", 0)
    await trip(breaker, 1)
    assert state_of(breaker) == "closed"
    await trip(breaker, 1)
    assert state_of(breaker) == "open"
    assert recorder.changes == [("closed", "open"), ("open", "closed"), ("closed", "open")]


async def test_probe_recovered_ends_the_open_period_but_never_closes(
    make_breaker: BreakerFactory, clock: FakeClock
) -> None:
    """Arrow open -> half_open (probe ok): at once, keeping growth; a failing trial re-opens; forced modes win."""
    breaker = make_breaker(reset_multiplier=2.0)
    await trip(breaker)
    breaker.probe_recovered()
    assert (state_of(breaker), breaker.open_until, breaker.retry_after()) == ("half_open", None, 0.0)
    with pytest.raises(UpstreamConnectError):
        await guarded(breaker, fail)  # the trial fails: live traffic has the last word
    assert (state_of(breaker), breaker.current_open_duration) == ("open", 60.0)
    breaker.probe_recovered()
    assert await guarded(breaker, ok) == "ok"
    assert (state_of(breaker), breaker.consecutive_failures) == ("closed", 0)
    breaker.probe_recovered()  # closed stays closed
    assert state_of(breaker) == "closed"
    breaker.force_open()
    breaker.probe_recovered()
    assert (breaker.state, breaker.mode) == ("open", "forced_open")


async def test_traffic_trips_are_marked_as_such(breaker: CircuitBreaker, clock: FakeClock, opened: list[None]) -> None:
    """BreakerChanged(by_traffic) to open comes from trips by calls and broken streams, not operator or probe actions."""
    await trip(breaker)
    assert len(opened) == 1
    clock.advance(30)
    with pytest.raises(UpstreamConnectError):
        await guarded(breaker, fail)
    assert len(opened) == 2
    breaker.automatic()
    breaker.force_open()
    breaker.automatic()
    await stream_broke(breaker)
    await stream_broke(breaker)
    assert len(opened) == 3
    breaker.automatic()
    breaker.force_closed()
    breaker.force_open()
    breaker.automatic()
    assert len(opened) == 3


async def test_events_carry_plain_state_names(breaker: CircuitBreaker, clock: FakeClock, recorder: Recorder) -> None:
    """BreakerChanged has old/new as plain names for a full cycle and for forced changes."""
    await trip(breaker)
    clock.advance(30)
    await guarded(breaker, ok)
    breaker.force_open()
    breaker.force_closed()
    breaker.automatic()
    assert recorder.changes == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
        ("open", "closed"),
    ]
    assert all(isinstance(name, str) for change in recorder.changes for name in change)


async def test_a_failing_subscriber_does_not_break_the_breaker(
    clock: FakeClock, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber that raises is logged; later subscribers still run and the trip still happens."""

    def broken(event: BreakerChanged) -> None:
        raise RuntimeError("metrics backend is down")

    bus = EventBus()
    bus.subscribe(BreakerChanged, broken)
    bus.subscribe(BreakerChanged, recorder.breaker_changed)
    breaker = CircuitBreaker(fail_max=2, clock=clock, events=bus)
    await trip(breaker)
    assert state_of(breaker) == "open"
    assert recorder.changes == [("closed", "open")]
    assert "event handler failed" in caplog.text


async def test_stale_stream_failure_does_not_decide_a_half_open_trial(
    make_breaker: BreakerFactory, clock: FakeClock, opened: list[None]
) -> None:
    """A stream admitted before the trip that breaks while half-open neither re-opens nor grows the period."""
    breaker = make_breaker(reset_multiplier=2.0)
    older = breaker.admit()  # a stream admitted while closed
    await reach_half_open(breaker, clock)
    await stream_broke(breaker, older, UpstreamInterruptedError("an older stream broke"))
    assert state_of(breaker) == "half_open"
    assert len(opened) == 1
    assert await guarded(breaker, ok) == "ok"  # the real trial decides
    assert state_of(breaker) == "closed"


async def test_replayed_failure_leaves_the_error_untouched(breaker: CircuitBreaker) -> None:
    """Replaying a stored error through aiobreaker changes neither its traceback nor its context."""
    try:
        raise UpstreamInterruptedError("the stream broke")
    except UpstreamInterruptedError as caught:
        error = caught
    frames = traceback.extract_tb(error.__traceback__)
    try:
        raise RuntimeError("an unrelated error being handled")
    except RuntimeError:
        await stream_broke(breaker, error=error)
    assert breaker.consecutive_failures == 1
    assert error.__context__ is None
    assert traceback.extract_tb(error.__traceback__) == frames


async def test_outcomes_of_calls_that_outlive_their_state_are_dropped(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Calls admitted while closed that end after the trip touch neither the open nor the half-open breaker."""
    release = asyncio.Event()

    async def slow(error: UpstreamConnectError | None) -> str:
        await release.wait()
        if error is not None:
            raise error
        return "late"

    late_failure = asyncio.create_task(guarded(breaker, lambda: slow(UpstreamConnectError("late failure"))))
    late_success = asyncio.create_task(guarded(breaker, lambda: slow(None)))
    await asyncio.sleep(0)
    await trip(breaker)
    clock.advance(30)
    trial_done = asyncio.Event()
    trial = asyncio.create_task(guarded(breaker, trial_done.wait))  # half-open, trial in flight
    await asyncio.sleep(0)
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "half_open"
    release.set()
    with pytest.raises(UpstreamConnectError):
        await late_failure
    assert await late_success == "late"
    assert breaker.snapshot() == snapshot
    trial_done.set()
    assert await trial is True
    assert state_of(breaker) == "closed"


async def test_calls_admitted_before_a_forced_mode_do_not_count(breaker: CircuitBreaker) -> None:
    """A failure of a call admitted before force_closed() is not counted afterwards."""
    release = asyncio.Event()

    async def slow_fail() -> NoReturn:
        await release.wait()
        raise UpstreamConnectError("late failure")

    late = asyncio.create_task(guarded(breaker, slow_fail))
    await asyncio.sleep(0)
    breaker.force_closed()
    release.set()
    with pytest.raises(UpstreamConnectError):
        await late
    assert breaker.consecutive_failures == 0


async def test_snapshot_reports_the_status(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """snapshot() has name, state, mode, failures, retry_after and open duration."""
    await trip(breaker, 1)
    assert breaker.snapshot() == {
        "name": "flowgpt",
        "state": "closed",
        "mode": "auto",
        "consecutive_failures": 1,
        "retry_after": 0.0,
        "open_duration": 30.0,
    }
    await trip(breaker, 1)
    clock.advance(5)
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["retry_after"], snapshot["consecutive_failures"]) == ("open", 25.0, 2)


@pytest.mark.parametrize(
    "options",
    [{"fail_max": 0}, {"half_open_calls": 0}, {"reset_timeout": -1}, {"reset_multiplier": 0.5}, {"reset_max": 1}],
)
def test_invalid_settings_are_refused(options: dict[str, Any]) -> None:
    """Nonsensical limits raise ValueError at construction."""
    with pytest.raises(ValueError, match=r"must be|need"):
        CircuitBreaker(**options)


async def test_refusal_reports_without_admitting(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """refusal() says what a call would get now and admits nothing (no trial slot taken)."""
    assert breaker.decision().error is None
    await trip(breaker)
    refusal = breaker.decision().error
    assert refusal is not None
    assert refusal.code == "circuit_open"
    assert breaker.decision().error is not None
    assert state_of(breaker) == "open"


# -- the health model's arrows (README, "Resilience"): one test each ------------------------------


async def test_arrow_open_to_half_open_when_the_period_ends_without_traffic(
    breaker: CircuitBreaker, clock: FakeClock, recorder: Recorder
) -> None:
    """Arrow open -> half_open (clock): reads say half_open on time without publishing; the next admission applies it."""
    await trip(breaker)
    clock.advance(breaker.current_open_duration - 0.001)
    assert state_of(breaker) == "open"
    clock.advance(0.001)
    assert breaker.retry_after() == 0.0
    assert state_of(breaker) == "half_open"
    assert recorder.changes == [("closed", "open")]  # reading announced nothing
    ticket = breaker.admit()
    assert ticket.trial
    assert recorder.changes == [("closed", "open"), ("open", "half_open")]
    await breaker.settle(ticket, CUT_SHORT)


async def test_arrow_open_to_half_open_fires_on_the_loop_timer() -> None:
    """With the real clock, a loop timer ends the open period, so gauges move without anyone reading the state."""
    events = EventBus()
    recorder = Recorder()
    events.subscribe(BreakerChanged, recorder.breaker_changed)
    breaker = CircuitBreaker(fail_max=1, reset_timeout=0.05, events=events)
    with pytest.raises(UpstreamConnectError):
        await guarded(breaker, fail)
    assert recorder.changes == [("closed", "open")]
    for _ in range(100):  # bounded: at most a second
        await asyncio.sleep(0.01)
        if len(recorder.changes) == 2:
            break
    assert recorder.changes == [("closed", "open"), ("open", "half_open")]


async def test_arrow_closed_to_open_ignores_rejected_requests(breaker: CircuitBreaker) -> None:
    """Arrow closed -> open counts only upstream failures: rejections neither count nor reset the count."""
    from gateway.errors import UpstreamRejectedError

    async def rejected() -> NoReturn:
        raise UpstreamRejectedError("too large", upstream_status=413)

    await trip(breaker, 1)
    for _ in range(10):
        with pytest.raises(UpstreamRejectedError):
            await guarded(breaker, rejected)
    assert (state_of(breaker), breaker.consecutive_failures) == ("closed", 1)


async def test_arrow_half_open_stays_when_the_trial_is_rejected(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A rejected trial decides nothing: still half-open, and the next caller gets the trial."""
    from gateway.errors import UpstreamRejectedError

    async def rejected() -> NoReturn:
        raise UpstreamRejectedError("bad request", upstream_status=400)

    await trip(breaker)
    clock.advance(30)
    with pytest.raises(UpstreamRejectedError):
        await guarded(breaker, rejected)
    assert state_of(breaker) == "half_open"
    assert await guarded(breaker, ok) == "ok"
    assert state_of(breaker) == "closed"


async def test_outcomes_from_before_a_trip_do_not_count_after_it_closed_again(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A stream admitted in an earlier closed period that breaks after closed -> open -> closed counts nothing."""
    older = breaker.admit()
    await trip(breaker)
    clock.advance(30)
    assert await guarded(breaker, ok) == "ok"
    assert state_of(breaker) == "closed"
    await stream_broke(breaker, older)
    await stream_broke(breaker, older)
    assert (state_of(breaker), breaker.consecutive_failures) == ("closed", 0)


async def test_a_probe_that_started_before_the_trip_does_not_half_open(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """b3 only for probes that started after the breaker opened: an older probe saw an older upstream."""
    started_before = clock.now
    clock.advance(1)
    await trip(breaker)
    breaker.probe_recovered(probe_started=started_before)
    assert state_of(breaker) == "open"
    breaker.probe_recovered(probe_started=clock.now)
    assert state_of(breaker) == "half_open"


async def test_a_trial_from_an_earlier_period_does_not_hold_a_later_one(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A trial still running across an operator reset frees nothing in, and blocks nothing of, a later half-open."""
    await trip(breaker)
    clock.advance(30)
    old_trial = breaker.admit()
    assert old_trial.trial
    breaker.force_open()
    breaker.automatic()
    await trip(breaker)
    clock.advance(30)
    assert breaker.decision().error is None  # the old trial does not count against this period's slot
    new_trial = breaker.admit()
    await breaker.settle(old_trial, CUT_SHORT)  # ends late: must not free the new period's slot
    busy = breaker.decision().error
    assert busy is not None
    assert busy.code == "half_open_busy"
    await breaker.settle(new_trial, CUT_SHORT)
    assert breaker.decision().error is None


async def test_stop_cancels_the_open_period_timer() -> None:
    """stop() (app cleanup) leaves no timer behind that would fire after the app is gone."""
    events = EventBus()
    recorder = Recorder()
    events.subscribe(BreakerChanged, recorder.breaker_changed)
    breaker = CircuitBreaker(fail_max=1, reset_timeout=0.05, events=events)
    with pytest.raises(UpstreamConnectError):
        await guarded(breaker, fail)
    breaker.stop()
    await asyncio.sleep(0.1)
    assert recorder.changes == [("closed", "open")]  # the timer did not run: nothing announced the period's end
    assert breaker.state == "half_open"  # while a read still tells the truth of the clock


async def test_a_model_is_refused_alone_and_unknown_models_share_one_bucket(make_breaker: BreakerFactory) -> None:
    """After another model's success, a streak of one model refuses that model only; unknown models count as one."""
    breaker = make_breaker(known_models=("good", "bad"))
    await breaker.settle(breaker.admit("good"), COMPLETED)
    first = breaker.admit("new-1")
    assert first.model == "*"
    await stream_broke(breaker, first)
    await stream_broke(breaker, breaker.admit("new-1"))
    refusal = breaker.decision("new-2").error  # the bucket, not just the model that failed
    assert refusal is not None
    assert (refusal.code, refusal.retry_after) == ("circuit_open", 30.0)
    assert (state_of(breaker), breaker.decision("bad").admitted, breaker.decision().admitted) == ("closed", True, True)


async def test_a_listener_that_calls_back_sees_whole_steps_in_order(clock: FakeClock) -> None:
    """A subscriber that commands the breaker mid-announcement queues behind it: the announced changes form one chain."""
    bus = EventBus()
    seen: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(fail_max=1, reset_timeout=10, clock=clock, events=bus)

    def meddle(event: BreakerChanged) -> None:
        seen.append((event.old, event.new))
        if event.new == "half_open":
            breaker.close_from_fleet()  # calls back while the period end and the trip are being announced

    bus.subscribe(BreakerChanged, meddle)
    await stream_broke(breaker)
    clock.advance(10)
    assert breaker.trip(5.0, 10.0)  # applies the due period end (a whole step), then the peer's trip
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("closed", "open")]
    assert (state_of(breaker), breaker.open_until) == ("open", clock.now + 5.0)
