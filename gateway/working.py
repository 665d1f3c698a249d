"""The provider's ``working`` flag: probe results with hysteresis, plus an operator override.

g4f kept ``working`` as a class constant that maintainers flipped by hand. Here
probe results flip it (``unhealthy_threshold`` failures in a row turn it off,
``healthy_threshold`` successes turn it back on, as Envoy's active health
checks do) and an operator can pin it for a maintenance window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from gateway.errors import UpstreamNotWorkingError
from gateway.events import EventBus, ProbeFinished, ProbeResult, WorkingChanged, WorkingMode
from gateway.route_config import DEFAULT_ROUTE

__all__ = ["FlagState", "ProbeResult", "WorkingFlag", "WorkingMode"]

# The flag's own state, in its own words: "unknown" before any verdict, "checking" while the first
# probe runs. Neither refuses traffic (admitted until a probe says otherwise).
FlagState = Literal["unknown", "checking", "working", "not_working"]
# A first probe failing so cannot heal by itself (a wrong token, a block page): down at once.
FATAL_AT_START: Final = frozenset({"auth", "blocked"})


class WorkingFlag:
    """Decides whether chat traffic may reach the upstream."""

    def __init__(
        self,
        *,
        healthy_threshold: int,
        unhealthy_threshold: int,
        clock: Callable[[], float],
        events: EventBus | None = None,
        route: str = DEFAULT_ROUTE,
    ) -> None:
        self.route = route
        self._healthy_threshold = healthy_threshold
        self._unhealthy_threshold = unhealthy_threshold
        self._clock = clock
        self._events = events or EventBus()
        self._probed_working = True  # traffic is admitted before the first probe completes
        self.mode: WorkingMode = "auto"
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.last_probe: ProbeResult | None = None
        self.probes_total = 0
        self.probed = False  # a probe answered, or a peer's verdict was adopted
        self.passed = False  # a probe succeeded (or a peer's "working" was adopted): working is known, not assumed
        # The prober reports these through probe_started/probe_ended/probe_scheduled, so only the flag writes them.
        self._probing = False
        self._next_probe_at: float | None = None

    @property
    def working(self) -> bool:
        """The effective flag: the override if set, otherwise the probes' verdict."""
        if self.mode == "auto":
            return self._probed_working
        return self.mode == "working"

    @property
    def probing(self) -> bool:
        """A probe is in flight (the state reads ``checking`` before the first verdict)."""
        return self._probing

    @property
    def next_probe_at(self) -> float | None:
        """clock() reading of the next scheduled probe, which a refusal's Retry-After points at."""
        return self._next_probe_at

    def probe_started(self) -> None:
        """The prober sent a probe."""
        self._probing = True

    def probe_ended(self) -> None:
        """The probe in flight ended, whatever its result (the result arrives as a :class:`ProbeFinished`)."""
        self._probing = False

    def probe_scheduled(self, at: float) -> None:
        """The prober's next probe is due at clock() reading ``at``."""
        self._next_probe_at = at

    def probe_finished(self, event: ProbeFinished) -> None:
        """Subscriber for the prober's results."""
        self.record(event.result)

    @property
    def state(self) -> FlagState:
        """The flag's own state: its verdict, or ``unknown``/``checking`` until a probe passes or it goes down."""
        if self.mode == "auto" and not self.passed and self._probed_working:
            return "checking" if self._probing else "unknown"
        return "working" if self.working else "not_working"

    def record(self, result: ProbeResult) -> None:
        """Apply one probe result with hysteresis (a first auth or block failure: down at once)."""
        before = self.working
        first = not self.probed
        self.probed = True
        self.last_probe = result
        self.probes_total += 1
        if first and not result.ok and result.kind in FATAL_AT_START:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            self._probed_working = False
        elif result.ok:
            self.passed = True
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            if self.consecutive_successes >= self._healthy_threshold:
                self._probed_working = True
        else:
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if self.consecutive_failures >= self._unhealthy_threshold:
                self._probed_working = False
        self._notify(before)

    @property
    def confirmed_working(self) -> bool:
        """Working, and known to be: pinned by an operator, or a probe passed (not the start-up default)."""
        return self.mode == "working" or (self.mode == "auto" and self.passed and self._probed_working)

    @property
    def probed_working(self) -> bool:
        """The probes' verdict, whatever an operator pinned."""
        return self._probed_working

    def restore(self, *, working: bool, failures: int, successes: int, last_probe: ProbeResult | None) -> None:
        """Adopt the verdict another process reached (a fleet member joining or reconnecting)."""
        before = self.working
        self.probed = True
        self.passed = self.passed or working
        self._probed_working = working
        self.consecutive_failures = failures
        self.consecutive_successes = successes
        if last_probe is not None:
            self.last_probe = last_probe
        self._notify(before)

    def set_mode(self, mode: WorkingMode) -> None:
        """Operator override; ``auto`` hands the flag back to the probes."""
        before = self.working
        self.mode = mode
        self._notify(before)

    def admission_error(self) -> UpstreamNotWorkingError | None:
        """The refusal for a chat request while not working, else None."""
        if self.working:
            return None
        if self.mode == "not_working":
            return UpstreamNotWorkingError("the upstream is marked not working by an operator", retry_after=30.0)
        retry_after = 1.0
        if self._next_probe_at is not None:
            retry_after = max(1.0, self._next_probe_at - self._clock())
        return UpstreamNotWorkingError("the upstream is failing its health probes", retry_after=retry_after)

    def counters(self) -> dict[str, object]:
        """The probe counters and the last probe, for /readyz and /status (its state comes from the route's health)."""
        last = self.last_probe
        return {
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
            "probes_total": self.probes_total,
            "last_probe": None
            if last is None
            else {"ok": last.ok, "at": last.at, "latency_seconds": round(last.latency, 6), "error": last.error},
        }

    def _notify(self, before: bool) -> None:
        after = self.working
        if after != before:
            self._events.publish(WorkingChanged(self.route, after, self.mode))
