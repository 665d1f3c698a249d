"""How long a breaker stays open: the current period on the injected clock, its growth, its timer.

The breaker decides *when* a period starts and ends; this keeps *how long*: the length
(``reset_timeout``, times ``multiplier`` per failed trial, capped at ``reset_max``), the
clock reading at which it ends, and a loop timer that calls ``on_end`` then, so the
breaker's state (and every gauge and readiness answer that reads it) changes on time
without traffic. Outside a running loop there is no timer; reads of the clock do it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class OpenPeriod:
    """The breaker's open period: ``until`` is None unless one is running."""

    def __init__(
        self,
        *,
        reset_timeout: float,
        multiplier: float,
        reset_max: float,
        clock: Callable[[], float],
        on_end: Callable[[], None],
    ) -> None:
        self._reset_timeout = reset_timeout
        self._multiplier = multiplier
        self.reset_max = reset_max
        self._clock = clock
        self._on_end = on_end
        self.duration = reset_timeout  # of the current period, or of the last one while half-open
        self.until: float | None = None
        self.started_at: float | None = None  # clock reading at which the last period began
        self._timer: asyncio.TimerHandle | None = None

    def over(self) -> bool:
        """A period ran and its end has passed."""
        return self.until is not None and self._clock() >= self.until

    def remaining(self) -> float:
        """Seconds left of the running period; 0 when none runs."""
        return 0.0 if self.until is None else max(0.0, self.until - self._clock())

    def start(self, *, grow: bool, length: float | None = None) -> None:
        """Begin a period: ``grow`` after a failed trial; ``length`` instead when another process set it."""
        if grow and length is None:
            self.duration = min(self.duration * self._multiplier, self.reset_max)
        self.started_at = self._clock()
        self._run_for(self.duration if length is None else length)

    def adopt(self, *, remaining: float, duration: float) -> None:
        """Another process's period: its length (kept within our bounds) for later growth."""
        self.duration = min(max(duration, self._reset_timeout), self.reset_max)
        if self.until is not None:  # already open: run on for the longer of the two
            self._run_for(remaining)

    def end(self) -> None:
        """The period is over (half-open): stop the timer; the length stays for growth."""
        self.until = None
        self._cancel()

    def reset(self) -> None:
        """Closed, or an operator took over: no period, the next one starts from ``reset_timeout``."""
        self.duration = self._reset_timeout
        self.end()

    def stop(self) -> None:
        """Cancel the timer (shutdown)."""
        self._cancel()

    def _run_for(self, seconds: float) -> None:
        self.until = self._clock() + seconds
        self._cancel()
        with contextlib.suppress(RuntimeError):  # no running loop: reads of the clock end it
            self._timer = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.until is None:
            return
        remaining = self.until - self._clock()
        if remaining > 0:  # an injected clock runs behind the loop's: check again later
            with contextlib.suppress(RuntimeError):
                self._timer = asyncio.get_running_loop().call_later(remaining, self._fire)
        else:
            self._on_end()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
