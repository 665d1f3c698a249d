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
from contextvars import ContextVar
from typing import Final


class Stopwatch:
    """One request's wall time, the part of it spent waiting on others, and the route that answered."""

    __slots__ = ("route", "started", "waited")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waited = 0.0
        self.route: str | None = None

    def overhead(self) -> float:
        """Seconds so far that were the gateway's own."""
        return max(0.0, time.perf_counter() - self.started - self.waited)


CURRENT: Final[ContextVar[Stopwatch | None]] = ContextVar("overhead_stopwatch", default=None)


class _Waiting:
    """The context manager :func:`waiting` returns: a class, not a generator, since it wraps every fragment."""

    __slots__ = ("_started", "_stopwatch")

    def __init__(self, stopwatch: Stopwatch | None) -> None:
        self._stopwatch = stopwatch
        self._started = 0.0

    def __enter__(self) -> None:
        if self._stopwatch is not None:
            self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self._stopwatch is not None:
            self._stopwatch.waited += time.perf_counter() - self._started


def waiting() -> _Waiting:
    """Count the enclosed wait (on the upstream, the client or a backoff) as not the gateway's own time."""
    return _Waiting(CURRENT.get())


def answered_by(route: str) -> None:
    """The request's answer comes from ``route`` (the last route tried wins)."""
    stopwatch = CURRENT.get()
    if stopwatch is not None:
        stopwatch.route = route
