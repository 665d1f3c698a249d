"""The alert drill: break the upstream, see the alerts fire and reach their receivers, heal, see them resolve.

``scripts/alert-drill`` runs it (``python -m monitoring.drill``). It starts the
whole stack on loopback (:class:`monitoring.stack.Stack`: simulator, gateway,
Alertmanager, Prometheus with the shipped rules, ``for:`` shortened to seconds,
and a webhook receiver), then:

1. waits until the gateway is ready, Prometheus scrapes it and the Watchdog
   heartbeat has reached its receiver (the alert path works);
2. breaks the upstream (``POST /_sim/faults {"http_status": 503}``) and sends chat
   requests until the circuit breaker opens; the health probe then turns the
   ``working`` flag off;
3. waits for GatewayUpstreamNotWorking (pager) and GatewayCircuitOpen (ticket) to
   fire in Prometheus and arrive at the webhook;
4. heals the upstream (``DELETE /_sim/faults``) and waits for both to resolve;
5. stops everything and exits 0, or non-zero with what was missing.

``--scenario live-fails`` (:mod:`monitoring.drill_live`) breaks every route in a way the
probe does not see (live traffic fails, probes pass) and expects the pages
GatewayAllBreakersOpen and GatewayAvailabilityBudgetBurn to arrive and resolve; the
default ``all`` runs both scenarios, each on a stack of its own.

Exit codes: 0 passed, 1 an expectation failed or timed out, 2 the stack could not
start (e.g. Prometheus missing), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from monitoring.processes import NOT_YET, StackError, wait_until
from monitoring.stack import Stack
from monitoring.webhook import Notification

# The alerts the drill expects, and the Alertmanager receiver each must reach
# (severity critical -> pager, warning -> ticket in monitoring/alertmanager.yml).
DRILL_ALERTS: Final[Mapping[str, str]] = {"GatewayUpstreamNotWorking": "pager", "GatewayCircuitOpen": "ticket"}
BREAK_FAULTS: Final[Mapping[str, object]] = {"http_status": 503}
WATCHDOG: Final = "Watchdog"
WATCHDOG_RECEIVER: Final = "watchdog"

Out = Callable[[str], None]


@dataclass
class AlertTrack:
    """What happened to one drill alert, in seconds since the drill began."""

    alertname: str
    receiver: str
    pending_at: float | None = None  # in Prometheus
    firing_at: float | None = None
    inactive_at: float | None = None
    notified_firing_at: float | None = None  # at the webhook
    notified_firing_receiver: str | None = None
    notified_resolved_at: float | None = None
    notified_resolved_receiver: str | None = None


@dataclass
class DrillResult:
    """The outcome: per-alert tracks, the moments of break and heal, and every problem found."""

    tracks: dict[str, AlertTrack]
    problems: list[str] = field(default_factory=list)
    broke_at: float | None = None
    healed_at: float | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every expectation held."""
        return not self.problems


class Drill:
    """One run of the drill against a started :class:`Stack`; prints as it goes.

    This scenario ("upstream down") breaks the upstream for probes and traffic alike;
    :mod:`monitoring.drill_live` subclasses it for "live traffic fails, probes pass".
    """

    name: str = "upstream-down"
    # The alerts that must fire and resolve, with the receiver each must reach.
    alerts: Mapping[str, str] = DRILL_ALERTS
    # Only these alerts' notifications of this severity count (None: any severity).
    severity: str | None = None
    # Further alerts the scenario may raise without failing (e.g. tickets for a spent budget).
    tolerated: frozenset[str] = frozenset()

    def __init__(self, stack: Stack, *, out: Out = print, phase_timeout: float = 45.0) -> None:
        self.stack = stack
        self.out = out
        self.phase_timeout = phase_timeout
        self.t0 = time.monotonic()
        self.result = DrillResult(tracks={name: AlertTrack(name, receiver) for name, receiver in self.alerts.items()})
        self._prometheus_states: dict[str, str] = {}
        stack.webhook.on_notification = self._on_notification
        for note in stack.webhook.notifications:  # e.g. the Watchdog, delivered while the stack started
            self._on_notification(note)

    def now(self) -> float:
        """Seconds since the drill began."""
        return time.monotonic() - self.t0

    def say(self, line: str) -> None:
        """Print one line with the elapsed time."""
        self.out(f"[{self.now():5.1f}s] {line}")

    async def run(self) -> DrillResult:
        """Healthy, break, fire, heal, resolve; returns the result (problems instead of raising)."""
        watcher: asyncio.Task[None] | None = None
        try:
            await self._wait(self._healthy, "a healthy start (gateway ready, scraped, Watchdog delivered)")
            self.say("healthy: gateway ready and working, Prometheus scrapes it, Watchdog reached receiver 'watchdog'")
            self._prometheus_states = {
                self._key(alert.alertname, alert.labels): alert.state for alert in await self.stack.prometheus.alerts()
            }
            watcher = asyncio.create_task(self._watch_prometheus(), name="drill-prometheus-watch")
            await self._break_and_heal()
        except StackError as exc:
            self.result.problems.append(str(exc))
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        self._check_notifications()
        self.result.elapsed = self.now()
        return self.result

    async def _break_and_heal(self) -> None:
        stack = self.stack
        self.result.broke_at = self.now()
        await stack.simulator.set_faults(BREAK_FAULTS)
        self.say(f"BREAK: POST /_sim/faults {json.dumps(BREAK_FAULTS)} (every upstream call now fails)")
        await stack.gateway.trip_breaker(
            within=self.phase_timeout,
            on_chat=lambda result, state: self.say(f"chat request -> {result.status} {result.code}; breaker {state}"),
        )
        await stack.gateway.wait_working(False, within=self.phase_timeout)
        refused = await stack.gateway.chat("Are you there?")
        self.say(f"gateway: working=false, breaker open; a chat request now gets {refused.status} {refused.code}")
        await self._wait(self._all_notified("firing"), "firing notifications of " + ", ".join(DRILL_ALERTS))

        self.result.healed_at = self.now()
        await stack.simulator.heal()
        self.say("HEAL: DELETE /_sim/faults")
        await stack.gateway.wait_working(True, within=self.phase_timeout)
        self.say("gateway: working=true, breaker closed")
        await self._wait(self._all_notified("resolved"), "resolved notifications of " + ", ".join(DRILL_ALERTS))
        await self._wait(self._drill_alerts_inactive, "Prometheus to show the drill alerts inactive")

    async def _wait(self, check: Callable[[], object], what: str) -> None:
        async def probe() -> bool:
            self.stack.ensure_running()
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            return bool(result)

        await wait_until(probe, within=self.phase_timeout, what=what, interval=0.1)

    async def _healthy(self) -> bool:
        """Ready and working, the Watchdog delivered, and nothing else pending or firing.

        (Right after start GatewayDown is briefly pending: its ``absent(up)`` is
        evaluated before the first scrape.)
        """
        status, body = await self.stack.gateway.readiness()
        active = {alert.alertname for alert in await self.stack.prometheus.alerts()} - {WATCHDOG}
        watchdog = self.stack.webhook.find(WATCHDOG, "firing")
        return status == 200 and bool(body.get("working")) and watchdog is not None and not active

    def _all_notified(self, status: str) -> Callable[[], bool]:
        """True once every drill alert reached the webhook with ``status`` (resolved: after the heal)."""

        def check() -> bool:
            return all(getattr(track, f"notified_{status}_at") is not None for track in self.result.tracks.values())

        return check

    def _drill_alerts_inactive(self) -> bool:
        healed = self.result.healed_at or 0.0
        return all(
            track.inactive_at is not None and track.inactive_at >= healed for track in self.result.tracks.values()
        )

    async def _watch_prometheus(self) -> None:
        """Print every change of an alert's state in Prometheus."""
        while True:
            with contextlib.suppress(StackError, *NOT_YET):
                current = {
                    self._key(alert.alertname, alert.labels): alert.state
                    for alert in await self.stack.prometheus.alerts()
                }
                for name in sorted(set(current) | set(self._prometheus_states)):
                    state = current.get(name, "inactive")
                    if self._prometheus_states.get(name, "inactive") != state:
                        self._prometheus_states[name] = state
                        self._record_prometheus(name, state)
            await asyncio.sleep(0.1)

    def _key(self, alertname: str, labels: Mapping[str, str]) -> str:
        """The alert's name, or ``name (severity)`` for a tier this scenario does not track."""
        severity = labels.get("severity", "")
        if self.severity is None or severity == self.severity or alertname not in self.alerts:
            return alertname
        return f"{alertname} ({severity})"

    def _record_prometheus(self, name: str, state: str) -> None:
        track = self.result.tracks.get(name)
        if track is not None and (state == "inactive" or getattr(track, f"{state}_at") is None):
            setattr(track, f"{state}_at", self.now())
        self.say(f"prometheus: {name} is {state}")

    def _on_notification(self, note: Notification) -> None:
        at = note.received_at - self.t0
        for alert in note.alerts:
            self.out(
                f"[{at:5.1f}s] webhook: receiver '{note.receiver}' ({note.path}) got {alert.status.upper()} "
                f"{alert.alertname} severity={alert.severity or '-'}"
            )
            track = self.result.tracks.get(alert.alertname)
            if track is None or (self.severity is not None and alert.severity != self.severity):
                continue
            if alert.status == "firing" and track.notified_firing_at is None:
                track.notified_firing_at, track.notified_firing_receiver = at, note.receiver
            healed = self.result.healed_at
            if (
                alert.status == "resolved"
                and healed is not None
                and at >= healed
                and track.notified_resolved_at is None
            ):
                track.notified_resolved_at, track.notified_resolved_receiver = at, note.receiver

    def _check_notifications(self) -> None:
        problems = self.result.problems
        for track in self.result.tracks.values():
            if track.firing_at is None:
                problems.append(f"{track.alertname}: never seen firing in Prometheus")
            for status, receiver in (
                ("firing", track.notified_firing_receiver),
                ("resolved", track.notified_resolved_receiver),
            ):
                if receiver is None:
                    problems.append(f"{track.alertname}: no {status} notification reached the webhook")
                elif receiver != track.receiver:
                    problems.append(
                        f"{track.alertname}: {status} notification went to '{receiver}', expected '{track.receiver}'"
                    )
        expected = {*self.alerts, *self.tolerated, WATCHDOG}
        for note in self.stack.webhook.notifications:
            for alert in note.alerts:
                if alert.status == "firing" and alert.alertname not in expected:
                    problems.append(f"unexpected alert {alert.alertname} fired (receiver '{note.receiver}')")
                if alert.alertname == WATCHDOG and note.receiver != WATCHDOG_RECEIVER:
                    problems.append(f"Watchdog went to '{note.receiver}', expected '{WATCHDOG_RECEIVER}'")


if __name__ == "__main__":  # python -m monitoring.drill, as before: the command line lives in drill_cli
    from monitoring.drill_cli import main

    sys.exit(main())
