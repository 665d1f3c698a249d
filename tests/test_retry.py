"""gateway.retry: full-jitter backoff and the retry budget, on a fake clock."""

from __future__ import annotations

from gateway.retry import WINDOW_SECONDS, RetryBudget, backoff_delay
from tests.clock_support import FakeClock


def test_backoff_is_full_jitter_up_to_the_cap() -> None:
    """The delay is the random draw times min(cap, base * 2**attempt)."""
    assert backoff_delay(0, base=0.1, cap=2.0, rng=lambda: 1.0) == 0.1
    assert backoff_delay(3, base=0.1, cap=2.0, rng=lambda: 1.0) == 0.8
    assert backoff_delay(10, base=0.1, cap=2.0, rng=lambda: 1.0) == 2.0
    assert backoff_delay(3, base=0.1, cap=2.0, rng=lambda: 0.5) == 0.4
    assert backoff_delay(3, base=0.1, cap=2.0, rng=lambda: 0.0) == 0.0


def test_budget_allows_the_minimum_then_the_ratio() -> None:
    """With few requests the minimum applies; with many, retries stay under ratio x requests."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, minimum=2, clock=clock)
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]
    for _ in range(20):
        budget.record_request()
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]  # 4 of 20 = 0.2


def test_budget_window_forgets_old_seconds() -> None:
    """Requests and retries older than the window no longer count."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, minimum=1, clock=clock)
    assert budget.try_acquire()
    assert not budget.try_acquire()
    clock.advance(WINDOW_SECONDS)
    assert budget.try_acquire()
