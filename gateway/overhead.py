"""The gateway's own time per request: what it adds on top of the upstream and the client.

A :class:`Stopwatch` lives for one chat request (a context variable, so the parts of the request path
need no extra arguments). The places that wait on someone else wrap the wait in :func:`waiting`: the
upstream (connecting, the first token, every later fragment), the client (its body, every write that
has to drain) and a deliberate pause (a retry's backoff). What is left of the request's wall time is
the gateway's overhead: admission and the queue for a slot, validation, route choice, encoding,
metrics, logging. It is exported as ``gateway_overhead_seconds{route}`` for the route that answered.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Final


class Stopwatch:
    """One request's wall time, the part of it spent waiting on others, and the route that answered.

    It is also the context manager :func:`waiting` returns (no object per wait: every upstream read that
    waits and every client write enters one).
    Waits that overlap (nested, or in two tasks of one request) count once, from the first start to the last end.
    Event loop only: ``asyncio.to_thread`` copies the context, and a wait entered in a thread would race
    the loop on the unlocked counters (no caller does that).
    """

    __slots__ = ("_depth", "_since", "route", "started", "waited")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waited = 0.0
        self.route: str | None = None
        self._depth = 0  # waits open now
        self._since = 0.0  # when the first of them began

    def overhead(self) -> float:
        """Seconds so far that were the gateway's own."""
        return max(0.0, time.perf_counter() - self.started - self.waited)

    def __enter__(self) -> None:
        if self._depth == 0:
            self._since = time.perf_counter()
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.waited += time.perf_counter() - self._since


CURRENT: Final[ContextVar[Stopwatch | None]] = ContextVar("overhead_stopwatch", default=None)


class _NotTimed:
    """What :func:`waiting` returns outside a request: nothing to count."""

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


_NOT_TIMED: Final = _NotTimed()


def waiting() -> AbstractContextManager[None]:
    """Count the enclosed wait (on the upstream, the client or a backoff) as not the gateway's own time."""
    stopwatch = CURRENT.get()
    return _NOT_TIMED if stopwatch is None else stopwatch


def answered_by(route: str) -> None:
    """The request's answer comes from ``route`` (the last route tried wins)."""
    stopwatch = CURRENT.get()
    if stopwatch is not None:
        stopwatch.route = route
