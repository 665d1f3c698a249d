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
        outer_began = time.perf_counter()
        with waiting():
            with waiting():
                time.sleep(0.02)
            time.sleep(0.01)
        outer = time.perf_counter() - outer_began
        # Counted once: at most the outer block's own wall time (counted twice, the inner sleep would
        # add its 0.02 s again); measured, not assumed, so a loaded machine's late wake-ups cannot fail it.
        assert 0.03 <= stopwatch.waited - first <= outer
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
