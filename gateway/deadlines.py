"""Timeouts for the request path: one loop timer for every deadline of the process.

``asyncio.timeout`` arms a loop timer per scope; entering and leaving one costs about 11 µs here
(uvloop and asyncio alike: a handle, a timer in the loop's heap or libuv, and its cancel), and a
request enters one per upstream phase and per waiting read. A :class:`Deadline` costs a heap push
and a flag instead: :class:`_Timers` keeps every live deadline of the loop in one heap and arms a
single loop timer for the earliest. Leaving a scope only marks its entry dead; dead entries are
dropped when they reach the top, or all at once when they outnumber the live ones, so the heap
stays bounded by the deadlines in flight.

The semantics are ``asyncio.timeout``'s: an expired scope cancels its task, and on leaving turns
that cancellation (and only that one: a client's own cancel stays a cancel) into ``TimeoutError``.
Event loop only, like the tasks it cancels.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
from types import TracebackType
from typing import Final, Protocol

# Rebuild the heap once dead entries are more than this many beyond the live ones.
_SLACK: Final = 256
# The coarsest loop clock among those the gateway runs on (uvloop: milliseconds).
_RESOLUTION: Final = 0.001


class _Expiring(Protocol):
    def _expire(self, generation: int) -> None: ...

    def waits_on(self, generation: int) -> bool: ...


class _Timers:
    """The heap of one loop's deadlines and the one timer armed for the earliest."""

    __slots__ = ("_armed_at", "_handle", "_heap", "_live", "_loop", "_seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, _Expiring, int]] = []
        self._seq = itertools.count()  # ties broken by arrival, never by comparing owners
        self._live = 0  # entries whose owner still waits on them
        self._armed_at = math.inf
        self._handle: asyncio.TimerHandle | None = None

    def add(self, when: float, owner: _Expiring, generation: int) -> None:
        """Call ``owner._expire(generation)`` at loop time ``when`` unless ``discard`` comes first."""
        if len(self._heap) > 2 * self._live + _SLACK:
            self._compact()
        heapq.heappush(self._heap, (when, next(self._seq), owner, generation))  # the heap of now, compacted or not
        self._live += 1
        if when < self._armed_at:
            self._arm(when)

    def discard(self) -> None:
        """One entry's owner no longer waits (its entry stays until it surfaces or a compaction)."""
        self._live -= 1

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        try:
            # Everything due within the loop's clock resolution fires now: uvloop's clock and timers
            # move in whole milliseconds, and a timer can run just before ``when`` reads as reached.
            now = self._loop.time() + _RESOLUTION
            # self._heap, not a local: an owner's _expire may add an entry, and that add may compact.
            while self._heap and self._heap[0][0] <= now:
                _, _, owner, generation = heapq.heappop(self._heap)
                owner._expire(generation)  # a stale generation is a no-op
        finally:
            self._arm_next()

    def _arm_next(self) -> None:
        """Arm for the earliest live entry; dead ones on top are dropped, never woken for."""
        heap = self._heap
        while heap and not heap[0][2].waits_on(heap[0][3]):
            heapq.heappop(heap)
        if heap and heap[0][0] < self._armed_at:
            self._arm(heap[0][0])

    def _compact(self) -> None:
        live = [entry for entry in self._heap if _is_live(entry)]
        heapq.heapify(live)
        self._heap = live
        self._live = len(live)


def _is_live(entry: tuple[float, int, _Expiring, int]) -> bool:
    return entry[2].waits_on(entry[3])


_local = threading.local()  # each thread's last loop and its timers: no shared state between threads


def timers() -> _Timers:
    """The running loop's timers: one per loop in the common case (a thread running one loop at a time).

    A thread that switches loops gets fresh timers for the new one; the old loop's keep their own
    timer, so every deadline still fires (on fewer shared timers).
    """
    loop = asyncio.get_running_loop()
    found: _Timers | None = getattr(_local, "timers", None)
    if found is None or found._loop is not loop:
        found = _local.timers = _Timers(loop)
    return found


class Deadline:
    """``with Deadline(seconds):`` bounds the awaits inside it.

    ``None`` means no limit yet; :meth:`reschedule` moves it (``expire_now`` fires it at once).
    A sync context manager: the cancellation lands at the next await inside, as with ``asyncio.timeout``.
    """

    __slots__ = ("_cancelling", "_entered", "_generation", "_task", "_timers", "_when", "expired")

    def __init__(self, seconds: float | None) -> None:
        self._timers = timers()
        self._when = None if seconds is None else self._timers._loop.time() + seconds
        self._generation = 0  # entries of older generations are stale
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._entered = False
        self.expired = False

    @property
    def when(self) -> float | None:
        """The loop time it fires at, or None."""
        return self._when

    def __enter__(self) -> Deadline:
        if self._entered:
            raise RuntimeError("a Deadline is entered once")  # as asyncio.timeout: a second use has no time left
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline needs a running task")
        self._entered = True
        self._task = task
        self._cancelling = task.cancelling()
        if self._when is not None:
            self._generation += 1
            self._timers.add(self._when, self, self._generation)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._when is not None and not self.expired:
            self._timers.discard()
        self._when = None
        self._generation += 1
        task, self._task = self._task, None
        # asyncio.timeout's rule: our cancel is taken back; only a cancel nobody else asked for is a timeout.
        if self.expired and task is not None and task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from error

    def reschedule(self, when: float | None) -> None:
        """Fire at loop time ``when`` instead (None: never); inside the scope only."""
        if self._task is None or self.expired:
            raise RuntimeError("reschedule a Deadline inside its scope, before it expires")
        if self._when is not None:
            self._timers.discard()
        self._generation += 1
        self._when = when
        if when is not None:
            self._timers.add(when, self, self._generation)

    def expire_now(self) -> None:
        """Fire now: the task is cancelled at once (its next await raises)."""
        self.reschedule(self._timers._loop.time())

    def waits_on(self, generation: int) -> bool:
        """Whether an entry of ``generation`` is still this scope's current one."""
        return generation == self._generation and self._task is not None and not self.expired

    def _expire(self, generation: int) -> None:
        if not self.waits_on(generation):
            return  # left, rescheduled or already fired: a stale entry
        assert self._task is not None
        self.expired = True
        self._timers.discard()
        self._task.cancel()
