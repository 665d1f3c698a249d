"""The loop timer that ends a breaker's open period on time, without traffic.

The lengths, the growth and when a period ends are the pure table's business
(:mod:`gateway.breaker_table`); this only calls ``on_fire`` when the loop's clock says the
period's end has come. Outside a running loop there is no timer: the breaker's next
command applies a due period end instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class PeriodTimer:
    """One re-armable loop timer; ``arm`` replaces any armed one."""

    def __init__(self, *, clock: Callable[[], float], on_fire: Callable[[], None]) -> None:
        self._clock = clock
        self._on_fire = on_fire
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        """Whether a timer is waiting to fire."""
        return self._handle is not None

    def arm(self, until: float) -> None:
        """Fire at clock reading ``until`` (an injected clock that runs behind is checked again then)."""
        self.cancel()
        with contextlib.suppress(RuntimeError):  # no running loop
            delay = max(0.0, until - self._clock())
            self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        """Disarm (a period ended otherwise, or shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._on_fire()
