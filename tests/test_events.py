"""gateway.events: the synchronous bus components talk through."""

from __future__ import annotations

import pytest

from gateway.events import BreakerChanged, EventBus, WorkingChanged


def test_events_reach_their_type_subscribers_in_order() -> None:
    """Each handler of the event's exact type is called once, in subscription order; others are not."""
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(BreakerChanged, lambda event: seen.append(f"first {event.new}"))
    bus.subscribe(BreakerChanged, lambda event: seen.append(f"second {event.new}"))
    bus.subscribe(WorkingChanged, lambda event: seen.append("working"))
    bus.publish(BreakerChanged("r", "closed", "open", "auto", by_traffic=True))
    assert seen == ["first open", "second open"]


def test_a_failing_handler_is_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in one handler does not reach the publisher or skip later handlers."""
    bus = EventBus()
    seen: list[bool] = []

    def broken(event: WorkingChanged) -> None:
        raise RuntimeError("boom")

    bus.subscribe(WorkingChanged, broken)
    bus.subscribe(WorkingChanged, lambda event: seen.append(event.working))
    bus.publish(WorkingChanged("r", working=False, mode="auto"))
    assert seen == [False]
    assert "event handler failed event=WorkingChanged" in caplog.text


def test_events_are_frozen() -> None:
    """Events are values: a handler cannot change what the next one sees."""
    event = WorkingChanged("r", working=True, mode="auto")
    with pytest.raises(AttributeError):
        event.working = False  # type: ignore[misc]
