"""The upstream circuit breaker: aiobreaker's counting, behind an adapter that contains its flaws.

This is the only module that imports aiobreaker 1.2.0. aiobreaker decides what counts and when the
breaker trips (``fail_max`` consecutive failures, a success resets the count, half-open closes on a
success and re-opens on a failure). The adapter adds what aiobreaker gets wrong or lacks:

* Time: every timing decision uses the injected monotonic ``clock``. aiobreaker's datetime fields
  mix ``utcnow()`` and ``now()`` (wrong on non-UTC hosts), so it gets a ten-year ``timedelta`` and
  never moves open -> half-open by itself; :meth:`CircuitBreaker.call` does that when ``open_until``
  has passed. Open periods grow by ``reset_multiplier`` per failed trial, capped at ``reset_max``.
* Half-open admits at most ``half_open_calls`` concurrent trials; further callers get
  ``CircuitOpenError(half_open=True)`` (code ``half_open_busy``) instead of reaching the upstream.
* Outcomes: the adapter awaits ``fn`` itself, then replays its outcome through aiobreaker's public
  ``call_async`` at once. The replay never suspends, so aiobreaker's state changes happen in one
  synchronous step (no stale state objects across awaits, and the ``utcnow`` DeprecationWarning
  can be silenced locally). An outcome is dropped when the breaker changed state while the call
  ran: only calls admitted in the current state period count. ``record_failure`` replays a failure
  seen after the guarded step (a stream that broke mid-way) the same way.
* Exclusion: only :class:`UpstreamError` counts as a failure. Any other ``Exception`` is excluded,
  which aiobreaker counts as a *success* (it resets the count and closes a half-open breaker: the
  upstream did answer). ``fn`` must therefore translate upstream failures, timeouts included, into
  ``UpstreamError``. ``asyncio.CancelledError`` (a client disconnect) counts as neither and frees
  its half-open trial slot.
* The call that trips the breaker raises the original ``UpstreamError``, never aiobreaker's
  ``CircuitBreakerError`` (whose ``str`` is a tuple); nothing from aiobreaker escapes.

Operator modes win over everything: ``forced_open`` refuses every call, ``forced_closed`` admits
every call and counts nothing. Entering either mode, :meth:`CircuitBreaker.automatic` and
:meth:`CircuitBreaker.close` reset the automatic machinery (closed, no failures, no growth).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Final, Literal, Protocol, TypedDict, TypeVar

from aiobreaker import CircuitBreaker as _AioBreaker
from aiobreaker import CircuitBreakerError, CircuitBreakerState
from aiobreaker.storage.memory import CircuitMemoryStorage

from gateway.errors import CircuitOpenError, UpstreamError

__all__ = [
    "HALF_OPEN_BUSY_RETRY_AFTER",
    "BreakerListener",
    "BreakerMode",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]
BreakerMode = Literal["auto", "forced_open", "forced_closed"]

# aiobreaker's own open -> half-open check compares datetimes; this keeps it from ever firing.
_AIOBREAKER_NEVER: Final = timedelta(days=3650)
# A trial is in flight and its length is unknown; refusals are cheap, so ask for a short wait.
HALF_OPEN_BUSY_RETRY_AFTER: Final = 1.0
_STATE_NAMES: Final[dict[Any, BreakerState]] = {
    CircuitBreakerState.CLOSED: "closed",
    CircuitBreakerState.OPEN: "open",
    CircuitBreakerState.HALF_OPEN: "half_open",
}


class BreakerListener(Protocol):
    """Told about every state change, forced ones included. Called synchronously: no I/O."""

    def state_changed(self, old: BreakerState, new: BreakerState) -> None: ...


class BreakerSnapshot(TypedDict):
    """The breaker as a status endpoint shows it."""

    name: str
    state: BreakerState
    mode: BreakerMode
    consecutive_failures: int
    retry_after: float
    open_duration: float


def _is_not_upstream_error(error: BaseException) -> bool:
    return not isinstance(error, UpstreamError)


class CircuitBreaker:
    """Guards the upstream's opening step; see the module docstring for the semantics."""

    def __init__(
        self,
        *,
        name: str = "flowgpt",
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        reset_multiplier: float = 1.0,
        reset_max: float = 300.0,
        half_open_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        listeners: Sequence[BreakerListener] = (),
        on_open: Callable[[], None] | None = None,
    ) -> None:
        if fail_max < 1 or half_open_calls < 1:
            raise ValueError("fail_max and half_open_calls must be at least 1")
        if reset_timeout < 0 or reset_multiplier < 1 or reset_max < reset_timeout:
            raise ValueError("need 0 <= reset_timeout <= reset_max and reset_multiplier >= 1")
        self.name = name
        self._reset_timeout = float(reset_timeout)
        self._reset_multiplier = float(reset_multiplier)
        self._reset_max = float(reset_max)
        self._half_open_calls = half_open_calls
        self._clock = clock
        self._listeners = tuple(listeners)
        self._on_open = on_open
        # Memory storage on purpose: CircuitRedisStorage is synchronous and would block the loop.
        self._breaker = _AioBreaker(
            fail_max=fail_max,
            timeout_duration=_AIOBREAKER_NEVER,
            exclude=[_is_not_upstream_error],
            state_storage=CircuitMemoryStorage(CircuitBreakerState.CLOSED),
            name=name,
        )
        self._mode: BreakerMode = "auto"
        self._reported: BreakerState = "closed"
        self._open_until: float | None = None
        self._open_duration = self._reset_timeout
        self._trials = 0
        self._generation = 0  # bumped on every state change; outcomes from older periods are dropped

    # -- read side ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The effective state (a forced mode decides it). Open stays open until a call arrives."""
        if self._mode == "forced_open":
            return "open"
        if self._mode == "forced_closed":
            return "closed"
        return _STATE_NAMES[self._breaker.current_state]

    @property
    def mode(self) -> BreakerMode:
        """``auto`` or the operator's forced mode."""
        return self._mode

    @property
    def open_until(self) -> float | None:
        """Clock reading at which an automatically opened breaker admits a trial; None otherwise."""
        return self._open_until

    @property
    def consecutive_failures(self) -> int:
        """Consecutive ``UpstreamError`` failures as aiobreaker counts them (opening does not reset)."""
        return int(self._breaker.fail_counter)

    @property
    def current_open_duration(self) -> float:
        """Length of the current (or, while half-open, the last) open period; reset_timeout after a close."""
        return self._open_duration

    def retry_after(self) -> float:
        """Seconds until the breaker would admit a trial call; 0 when it admits now."""
        if self._mode == "forced_open":
            return self._open_duration
        if self._open_until is not None:
            return max(0.0, self._open_until - self._clock())
        if self.state == "half_open" and self._trials >= self._half_open_calls:
            return HALF_OPEN_BUSY_RETRY_AFTER
        return 0.0

    def snapshot(self) -> BreakerSnapshot:
        """State, mode, failure count, retry-after and open duration for status endpoints."""
        return {
            "name": self.name,
            "state": self.state,
            "mode": self._mode,
            "consecutive_failures": self.consecutive_failures,
            "retry_after": self.retry_after(),
            "open_duration": self._open_duration,
        }

    # -- guarded calls -----------------------------------------------------------------------

    async def call(self, fn: Callable[[], Awaitable[T]], *, defer_success: bool = False) -> T:
        """Admit the call or raise ``CircuitOpenError``; then run ``fn`` and count its outcome.

        Guard the coroutine that opens a stream, not an async generator: report later stream
        failures with :meth:`record_failure`. With ``defer_success`` a success in the closed state
        is not counted here but by :meth:`record_success` when the stream ends; otherwise every
        opened stream would reset the failure count and streams that always break mid-way could
        never trip the breaker. A half-open trial still counts at once, so recovery is fast.
        """
        if inspect.isasyncgenfunction(fn):
            raise TypeError("guard the coroutine that opens the stream, not an async generator function")
        if self._mode == "forced_closed":
            return await fn()
        trial = self._admit()
        generation = self._generation
        try:
            try:
                result = await fn()
            except Exception as error:
                if generation == self._generation:
                    await self._replay(error)
                raise  # the original error, also for the call that tripped the breaker
            if generation == self._generation and (trial or not defer_success):
                await self._replay(None)
            return result
        finally:
            if trial:
                self._trials -= 1

    async def record_failure(self, error: UpstreamError) -> None:
        """Count a failure seen after the guarded step succeeded (a stream that broke); may trip.

        Counted only while closed: open means already tripped, and a half-open trial's success
        closes the breaker at its first token, so a stream breaking while half-open was admitted
        in an earlier period and must not decide the current trial. Ignored in forced modes.
        """
        if not isinstance(error, UpstreamError):
            raise TypeError("only an UpstreamError is a breaker failure")
        if self._mode != "auto" or self.state != "closed":
            return
        await self._replay(error)

    async def record_success(self) -> None:
        """Count a deferred success (a stream that ended cleanly); only meaningful while closed."""
        if self._mode != "auto" or self.state != "closed" or self._breaker.fail_counter == 0:
            return  # aiobreaker's closed-state success only resets the count: nothing to do at zero
        await self._replay(None)

    # -- operator and probe control ----------------------------------------------------------

    def force_open(self) -> None:
        """Refuse every call until :meth:`automatic` or :meth:`force_closed`."""
        self._set_mode("forced_open")

    def force_closed(self) -> None:
        """Admit every call and count nothing until :meth:`automatic` or :meth:`force_open`."""
        self._set_mode("forced_closed")

    def automatic(self) -> None:
        """Hand control back to the breaker, starting closed with a fresh failure count."""
        self._set_mode("auto")

    def close(self) -> None:
        """Close (the probe saw the upstream recover): reset failures and growth. A forced mode still wins."""
        self._reset()
        self._sync(traffic=False)

    # -- internals ---------------------------------------------------------------------------

    def refusal(self) -> CircuitOpenError | None:
        """The error a call would be refused with right now, or None; changes nothing.

        Lets callers refuse before doing any work of their own (reading a body, say).
        """
        if self._mode == "forced_open":
            return CircuitOpenError(
                f"circuit breaker {self.name!r} is forced open by an operator", retry_after=self.retry_after()
            )
        state = self.state
        if state == "open":
            remaining = self.retry_after()
            if remaining > 0:
                return CircuitOpenError(
                    f"circuit breaker {self.name!r} is open; retry in {math.ceil(remaining)} s",
                    retry_after=remaining,
                )
        elif state == "half_open" and self._trials >= self._half_open_calls:
            return CircuitOpenError(
                f"circuit breaker {self.name!r} is half-open and its trial call is in progress",
                retry_after=HALF_OPEN_BUSY_RETRY_AFTER,
                half_open=True,
            )
        return None

    def _admit(self) -> bool:
        """Raise if the call must be refused; return True when it holds a half-open trial slot."""
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        if self.state == "open":  # the open period is over: this call is the trial
            self._breaker.half_open()
            self._sync(traffic=True)
        if self.state != "half_open":
            return False
        self._trials += 1
        return True

    async def _replay(self, error: Exception | None) -> None:
        """Feed one finished call's outcome through aiobreaker's public path; never raises it."""

        async def outcome() -> None:
            if error is not None:
                raise error

        # Raising ``error`` again must not rewrite what the caller will see.
        saved = (error.__traceback__, error.__context__) if error is not None else None
        try:
            # outcome() never suspends, so this await completes in one step and the warnings
            # filter cannot leak to other tasks. Python 3.12+ warns about utcnow() inside
            # aiobreaker's open(); under -W error the breaker would otherwise never open.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=r"datetime\.datetime\.utcnow", category=DeprecationWarning, module="aiobreaker"
                )
                await self._breaker.call_async(outcome)
        except CircuitBreakerError:
            pass  # the tripping call: its __cause__ is ``error``, which the caller re-raises itself
        except Exception as exc:
            if exc is not error:
                raise
        finally:
            if error is not None and saved is not None:
                error.__traceback__, error.__context__ = saved
            self._sync(traffic=True)

    def _set_mode(self, mode: BreakerMode) -> None:
        if mode == self._mode:
            return
        self._mode = mode
        self._reset()
        self._sync(traffic=False)

    def _reset(self) -> None:
        """Closed aiobreaker, zero failures (its close() resets the count), no growth."""
        self._breaker.close()
        self._open_duration = self._reset_timeout
        self._open_until = None
        self._generation += 1

    def _sync(self, *, traffic: bool) -> None:
        """Book-keep and announce a change of the effective state; ``traffic``: live calls caused it."""
        old, new = self._reported, self.state
        if old == new:
            return
        self._reported = new
        self._generation += 1
        if new == "closed":
            self._open_duration = self._reset_timeout
            self._open_until = None
        elif new == "half_open":
            self._open_until = None
        elif self._mode == "auto":
            if old == "half_open":
                self._open_duration = min(self._open_duration * self._reset_multiplier, self._reset_max)
            self._open_until = self._clock() + self._open_duration
        log_level = logging.WARNING if new == "open" else logging.INFO
        log.log(log_level, "breaker state change breaker=%s old=%s new=%s mode=%s", self.name, old, new, self._mode)
        for listener in self._listeners:
            try:
                listener.state_changed(old, new)
            except Exception:
                log.exception("breaker listener failed breaker=%s listener=%r", self.name, listener)
        if traffic and new == "open" and self._on_open is not None:
            try:
                self._on_open()
            except Exception:
                log.exception("breaker on_open hook failed breaker=%s", self.name)
