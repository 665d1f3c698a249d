"""Retry policy: how many and how far apart, full-jitter exponential backoff, an Envoy-style retry budget."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

WINDOW_SECONDS: Final = 10


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many retries and how far apart."""

    max_retries: int
    backoff_base: float
    backoff_max: float


def backoff_delay(attempt: int, *, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (AWS architecture blog's variant)."""
    return rng() * min(cap, base * 2.0**attempt)


class RetryBudget:
    """Allows retries only while they stay under ``ratio`` of the requests seen in the last window.

    Without it a full outage turns every request into ``1 + retry_max`` upstream
    calls exactly when the upstream can least take them. ``minimum`` keeps a few
    retries available at low traffic, as Envoy's ``min_retry_concurrency`` does.
    Counts live in one-second buckets, so recording is O(1).
    """

    def __init__(self, *, ratio: float, minimum: int, clock: Callable[[], float]) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._clock = clock
        self._requests = [0] * WINDOW_SECONDS
        self._retries = [0] * WINDOW_SECONDS
        self._stamps = [-1] * WINDOW_SECONDS

    def _slot(self) -> int:
        second = int(self._clock())
        slot = second % WINDOW_SECONDS
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def record_request(self) -> None:
        """A new client request arrived (retries are not requests)."""
        self._requests[self._slot()] += 1

    def try_acquire(self) -> bool:
        """Spend one retry if the budget allows it."""
        slot = self._slot()
        oldest = int(self._clock()) - WINDOW_SECONDS
        requests = sum(n for n, stamp in zip(self._requests, self._stamps, strict=True) if stamp > oldest)
        retries = sum(n for n, stamp in zip(self._retries, self._stamps, strict=True) if stamp > oldest)
        if retries >= max(self._minimum, self._ratio * requests):
            return False
        self._retries[slot] += 1
        return True
