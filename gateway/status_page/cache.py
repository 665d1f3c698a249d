"""One build of the page's data per second at most, however many browsers or scripts ask.

Building it reads every route's series and computes windows and sparklines (tens of
milliseconds with 64 routes); without a cache, a few clients polling ``/ui/data`` in a
loop would keep the event loop busy and stall the traffic the gateway is for. A change
of state (a route down or up, a breaker moving, draining) is shown at once: it is part
of the key; only the counts may be a second old.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Reused(Generic[T]):
    """The last value ``build`` made, reused while younger than ``max_age`` seconds and made for the same ``key``."""

    def __init__(self, max_age: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._value: T | None = None
        self._built_at = float("-inf")
        self._key: Hashable = None

    def get(self, build: Callable[[], T], *, key: Hashable = None) -> T:
        """The cached value, or a fresh one when it is too old or ``key`` (what must show at once) changed."""
        now = self._clock()
        if self._value is None or key != self._key or now - self._built_at >= self._max_age:
            self._value, self._built_at, self._key = build(), now, key
        return self._value
