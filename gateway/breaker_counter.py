"""aiobreaker's failure counting, behind the smallest interface the breaker needs.

This is the only module that imports aiobreaker 1.2.0. aiobreaker decides what counts and
when the breaker trips (``fail_max`` consecutive failures, a success resets the count,
half-open closes on a success and re-opens on a failure). Its flaws stay here:

* Time: its datetime fields mix ``utcnow()`` and ``now()`` (wrong on non-UTC hosts), so it
  gets a ten-year ``timedelta`` and never moves open -> half-open by itself; the breaker
  owns every timing decision.
* Outcomes are replayed through its public ``call_async`` at once. The replay never
  suspends, so its state changes happen in one synchronous step and its ``utcnow``
  DeprecationWarning (Python 3.12+) can be silenced locally without leaking to other tasks.
* Nothing from aiobreaker escapes: a failure is replayed as a private exception, and the
  replay swallows it and the tripping call's ``CircuitBreakerError``.
* Memory storage on purpose: its ``CircuitRedisStorage`` is synchronous and would block
  the loop (the fleet shares decisions instead, see :mod:`gateway.fleet`).
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any, Final

from aiobreaker import CircuitBreaker as _AioBreaker
from aiobreaker import CircuitBreakerError, CircuitBreakerState
from aiobreaker.storage.memory import CircuitMemoryStorage

from gateway.events import BreakerState

# aiobreaker's own open -> half-open check compares datetimes; this keeps it from ever firing.
_AIOBREAKER_NEVER: Final = timedelta(days=3650)
_STATE_NAMES: Final[dict[Any, BreakerState]] = {
    CircuitBreakerState.CLOSED: "closed",
    CircuitBreakerState.OPEN: "open",
    CircuitBreakerState.HALF_OPEN: "half_open",
}


class _CountedFailure(Exception):
    """What aiobreaker is shown for a failure: it counts only calls that raise."""


class FailureCounter:
    """Counts consecutive upstream failures and says when they trip; knows nothing of time."""

    def __init__(self, *, name: str, fail_max: int) -> None:
        self._breaker = _AioBreaker(
            fail_max=fail_max,
            timeout_duration=_AIOBREAKER_NEVER,
            state_storage=CircuitMemoryStorage(CircuitBreakerState.CLOSED),
            name=name,
        )

    @property
    def state(self) -> BreakerState:
        """aiobreaker's state: ``closed``, ``open`` or ``half_open``."""
        return _STATE_NAMES[self._breaker.current_state]

    @property
    def failures(self) -> int:
        """Consecutive failures counted (opening does not reset them)."""
        return int(self._breaker.fail_counter)

    def open(self) -> None:
        """Open without a failure (another process tripped)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="aiobreaker")
            self._breaker.open()

    def half_open(self) -> None:
        """The open period ended: the next outcome decides."""
        self._breaker.half_open()

    def close(self) -> None:
        """Closed with zero failures."""
        self._breaker.close()

    def follow(self, to: BreakerState) -> None:
        """Move to the breaker's state ``to``; ``closed`` always zeroes the count, the others only move."""
        if to == "closed":
            self.close()
        elif self.state != to:
            (self.open if to == "open" else self.half_open)()

    async def replay(self, *, failed: bool) -> None:
        """Count one finished call, a failure or a success; never raises."""

        async def outcome() -> None:
            if failed:
                raise _CountedFailure

        try:
            # outcome() never suspends, so this await completes in one step and the warnings
            # filter cannot leak to other tasks. Python 3.12+ warns about utcnow() inside
            # aiobreaker's open(); under -W error the breaker would otherwise never open.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=r"datetime\.datetime\.utcnow", category=DeprecationWarning, module="aiobreaker"
                )
                await self._breaker.call_async(outcome)
        except (CircuitBreakerError, _CountedFailure):
            pass  # the failure was counted (the tripping one comes back as CircuitBreakerError)
