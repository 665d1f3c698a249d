"""What happened to the routes, and why: the last state changes in plain words, and each route's up/down clock.

The timeline subscribes to every route's events (breaker, working flag, probe results) and keeps
the last :data:`MAX_EVENTS` changes that mattered: breaker transitions (traffic, timer, probe,
operator, fleet), working-flag flips, and probe results that changed from passing to failing or
back. Each carries its time, route, from -> to and a reason a person can read ("3 failures:
upstream blocked the request (Cloudflare challenge)"). It also keeps, per route, since when the
route is up or down, how often it went down and for how long in total: the status page samples
these counters like the others.

Memory bound: a ``deque(maxlen=MAX_EVENTS)`` of frozen events whose strings are capped
(:data:`MAX_REASON_CHARS`; route names are at most 32 characters, states are fixed words), so the
events take at most :data:`MEMORY_BOUND` bytes, measured by ``tests/test_timeline.py`` with every
string at its longest (the deque and the records included): 51,266 B counting every string of every
event separately, 22,943 B newly allocated (tracemalloc; shared words are stored once).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from gateway.events import BreakerChanged, ProbeFinished, WorkingChanged

if TYPE_CHECKING:
    from gateway.route_pool import Route

MAX_EVENTS: Final = 100
MAX_REASON_CHARS: Final = 160
MEMORY_BOUND: Final = 64_000  # bytes; see the module docstring
Kind = Literal["breaker", "working", "probe"]
# Why live traffic tripped a breaker, by the error kind (or cause) of the failure that opened it.
CAUSE_WORDS: Final = {
    "connect": "could not connect to the upstream",
    "timeout": "the upstream did not answer in time",
    "http_status": "the upstream answered with an error status",
    # The causes main's UpstreamError.cause adds (a 5xx, or a status one path may cause):
    "http_5xx": "the upstream answered with a server error (5xx)",
    "http_other": "the upstream answered with an error status",
    "rate_limited": "the upstream rate-limited the gateway (429)",
    "blocked": "upstream blocked the request (Cloudflare challenge)",
    "auth": "the upstream refused the token (401)",
    "protocol": "the upstream sent something that is not its protocol",
    "interrupted": "the upstream stream broke after it started",
}


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One change: Unix time, route, what changed, from -> to, and why in plain words."""

    at: float
    route: str
    kind: Kind
    old: str
    new: str
    reason: str


class RouteClock:
    """Since when a route is up or down, how often it went down and its total downtime (monotonic seconds)."""

    __slots__ = ("_clock", "_down_closed", "flaps", "since", "up")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.up = True
        self.since = clock()
        self.flaps = 0
        self._down_closed = 0.0

    def set(self, up: bool) -> None:
        """The route's status now; a change restarts the clock."""
        if up == self.up:
            return
        now = self._clock()
        if up:
            self._down_closed += now - self.since
        else:
            self.flaps += 1
        self.up, self.since = up, now

    def downtime(self) -> float:
        """Seconds down since start-up, the current down period included."""
        return self._down_closed + (0.0 if self.up else self._clock() - self.since)

    def age(self) -> float:
        """Seconds since the last change (or since start-up)."""
        return self._clock() - self.since


def cause(kind: str | None) -> str:
    """A failure kind in plain words."""
    return CAUSE_WORDS.get(kind or "", "an upstream failure")


def _path_note(event: BreakerChanged) -> str:
    """What kept a trip from being shared as an outage, when another cause tripped it."""
    if event.path_cause is None or event.path_cause == event.cause:
        return ""
    return f" (earlier: {cause(event.path_cause)})"


class Timeline:
    """The last :data:`MAX_EVENTS` changes of every route and each route's :class:`RouteClock`."""

    def __init__(self, *, fail_max: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._fail_max = fail_max
        self._clock = clock
        self._events: deque[TimelineEvent] = deque(maxlen=MAX_EVENTS)
        self.clocks: dict[str, RouteClock] = {}
        self._probe_ok: dict[str, bool] = {}

    def watch(self, route: Route) -> None:
        """Subscribe to ``route``'s events (after the flag and breaker, so their state is the new one)."""
        self.clocks[route.name] = RouteClock(self._clock)
        route.events.subscribe(BreakerChanged, lambda event: self._breaker(route, event))
        route.events.subscribe(WorkingChanged, lambda event: self._working(route, event))
        route.events.subscribe(ProbeFinished, lambda event: self._probe(route, event))

    def events(self) -> list[dict[str, Any]]:
        """The changes, newest first, JSON-ready."""
        return [asdict(event) for event in reversed(self._events)]

    def _add(self, route: Route, kind: Kind, old: str, new: str, reason: str) -> None:
        self._events.append(TimelineEvent(time.time(), route.name, kind, old, new, reason[:MAX_REASON_CHARS]))
        self.clocks[route.name].set(route.health().up)

    def _breaker(self, route: Route, event: BreakerChanged) -> None:
        if event.old == event.new:
            return
        if event.mode != "auto":
            reason = f"an operator forced the breaker {event.mode.removeprefix('forced_')}"
        elif event.from_fleet:
            reason = "a peer gateway " + (f"tripped it: {cause(event.cause)}" if event.new == "open" else "closed it")
        elif event.new == "open" and event.old == "closed":
            reason = f"{self._fail_max} failures: {cause(event.cause)}" + _path_note(event)
        elif event.new == "open":
            reason = f"the trial request failed: {cause(event.cause)}" + _path_note(event)
        elif event.new == "half_open":
            reason = "open period over or a probe passed: the next request is a trial"
        else:
            reason = "the trial request succeeded" if event.by_traffic else "closed again"
        self._add(route, "breaker", event.old, event.new, reason)

    def _working(self, route: Route, event: WorkingChanged) -> None:
        flag = route.flag
        new, old = ("working", "not working") if event.working else ("not working", "working")
        if event.mode != "auto":
            reason = f"an operator pinned the flag {event.mode.replace('_', ' ')}"
        elif event.working:
            reason = "the probe passed"
        else:
            last = flag.last_probe
            why = "no reason given" if last is None or last.error is None else last.error
            failed = max(1, flag.consecutive_failures)
            reason = f"{failed} failed probe{'s' if failed > 1 else ''}: {why}"
        self._add(route, "working", old, new, reason)

    def _probe(self, route: Route, event: ProbeFinished) -> None:
        ok = event.result.ok
        before = self._probe_ok.get(route.name)
        self._probe_ok[route.name] = ok
        if before is ok:
            return
        old = "not yet probed" if before is None else "passing" if before else "failing"
        reason = "the probe got its first token" if ok else (event.result.error or "the probe failed")
        self._add(route, "probe", old, "passing" if ok else "failing", reason)
