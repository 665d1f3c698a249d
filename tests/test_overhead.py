"""gateway/overhead.py: the request's stopwatch counts waits without an object per wait, and overlaps once."""

from __future__ import annotations

import time

from gateway.overhead import CURRENT, Stopwatch, waiting


def test_a_wait_counts_as_waited_and_overlapping_waits_count_once() -> None:
    """Sequential waits add up; a wait inside another (or overlapping it) adds nothing twice."""
    stopwatch = Stopwatch()
    token = CURRENT.set(stopwatch)
    try:
        with waiting():
            time.sleep(0.02)
        first = stopwatch.waited
        assert first >= 0.02
        with waiting():
            with waiting():
                time.sleep(0.02)
            time.sleep(0.01)
        assert 0.03 <= stopwatch.waited - first < 0.03 + 0.02  # 0.03 s once, not 0.05 s
        assert stopwatch.overhead() < 0.02
    finally:
        CURRENT.reset(token)


def test_waiting_outside_a_request_counts_nothing_and_fails_nothing() -> None:
    """Without a stopwatch (the probe, tests) a wait is a no-op context manager; an error still propagates."""
    assert CURRENT.get() is None
    with waiting():
        pass
    try:
        with waiting():
            raise KeyError("x")
    except KeyError:
        pass
    else:
        raise AssertionError("the error was swallowed")
