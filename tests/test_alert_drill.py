"""End to end: the alert drill against the real stack (separate processes, real Prometheus and Alertmanager).

One drill run per module (about 15 s): the upstream breaks, GatewayUpstreamNotWorking
and GatewayCircuitOpen must reach their Alertmanager receivers as firing, and as
resolved after the heal. The tests below read that one run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from monitoring.configs import load_yaml_mapping, rule_files
from monitoring.drill import DRILL_ALERTS, WATCHDOG, WATCHDOG_RECEIVER, Drill, DrillResult
from monitoring.processes import ManagedProcess
from monitoring.stack import Stack
from monitoring.webhook import Notification
from tests.rule_support import RECEIVER_FOR_SEVERITY, alert_rules
from tests.tool_support import live_child_pids

pytestmark = pytest.mark.slow

# Generous for a loaded 2-core machine; a healthy run takes about 15 s.
DRILL_LIMIT = 75.0
PHASE_LIMIT = 30.0


@dataclass(frozen=True)
class DrillRun:
    """What one drill run left behind for the tests to check."""

    result: DrillResult
    output: list[str]
    for_overrides: dict[str, str]
    rules_copy: dict[str, dict[str, Any]]
    workdir: Path
    notifications: list[Notification]
    processes: list[ManagedProcess]
    leaked_children: set[int]
    seconds: float

    def explain(self) -> str:
        """The drill's output, for assertion messages."""
        return "\n".join(self.output)


@pytest_asyncio.fixture(name="drill_run", scope="module", loop_scope="module")
async def fixture_drill_run() -> AsyncIterator[DrillRun]:
    """Run the drill once, stop the stack, and record what happened."""
    children_before = live_child_pids()
    output: list[str] = []
    stack = Stack()
    started = time.monotonic()
    try:
        async with stack, asyncio.timeout(DRILL_LIMIT):
            rules_copy = {path.name: load_yaml_mapping(path) for path in sorted(stack.rules_dir.glob("*.yml"))}
            try:
                result = await Drill(stack, out=output.append, phase_timeout=PHASE_LIMIT).run()
            finally:
                output.append(stack.log_tails())
    finally:
        stack.kill_all()  # a no-op after a clean stop
    yield DrillRun(
        result=result,
        output=output,
        for_overrides=dict(stack.options.for_overrides),
        rules_copy=rules_copy,
        workdir=stack.workdir,
        notifications=list(stack.webhook.notifications),
        processes=list(stack.processes),
        leaked_children=live_child_pids() - children_before,
        seconds=time.monotonic() - started,
    )


def happened_after(moment: float | None, origin: float | None) -> bool:
    """True if both moments were recorded and ``moment`` came after ``origin``."""
    return moment is not None and origin is not None and moment > origin


def test_drill_passes(drill_run: DrillRun) -> None:
    """The drill reports no problem and finishes well within its limit."""
    assert drill_run.result.ok, f"{drill_run.result.problems}\n{drill_run.explain()}"
    assert drill_run.seconds < DRILL_LIMIT


@pytest.mark.parametrize("alertname", sorted(DRILL_ALERTS))
def test_drill_expects_the_receiver_the_routing_gives(alertname: str) -> None:
    """The drill's expected receiver is the one the alert's severity routes to."""
    severities = {rule.labels["severity"] for rule in alert_rules() if rule.name == alertname}
    assert {RECEIVER_FOR_SEVERITY[severity] for severity in severities} == {DRILL_ALERTS[alertname]}


@pytest.mark.parametrize("alertname", sorted(DRILL_ALERTS))
def test_alert_fires_and_reaches_its_receiver(drill_run: DrillRun, alertname: str) -> None:
    """After the break the alert fires in Prometheus and its receiver gets a firing notification."""
    track = drill_run.result.tracks[alertname]
    broke = drill_run.result.broke_at
    assert happened_after(track.firing_at, broke), drill_run.explain()
    assert happened_after(track.notified_firing_at, broke), drill_run.explain()
    assert track.notified_firing_receiver == DRILL_ALERTS[alertname], drill_run.explain()


@pytest.mark.parametrize("alertname", sorted(DRILL_ALERTS))
def test_alert_resolves_at_its_receiver_after_the_heal(drill_run: DrillRun, alertname: str) -> None:
    """After the heal the alert leaves Prometheus and its receiver gets a resolved notification."""
    track = drill_run.result.tracks[alertname]
    healed = drill_run.result.healed_at
    assert happened_after(track.inactive_at, healed), drill_run.explain()
    assert happened_after(track.notified_resolved_at, healed), drill_run.explain()
    assert track.notified_resolved_receiver == DRILL_ALERTS[alertname], drill_run.explain()


def test_watchdog_reaches_its_receiver(drill_run: DrillRun) -> None:
    """The heartbeat arrived at the watchdog receiver (the drill waits for it before breaking anything)."""
    receivers = {
        note.receiver for note in drill_run.notifications for alert in note.alerts if alert.alertname == WATCHDOG
    }
    assert receivers == {WATCHDOG_RECEIVER}, drill_run.explain()
    assert any(f"got FIRING {WATCHDOG}" in line for line in drill_run.output), drill_run.explain()


def test_drill_runs_the_shipped_rules_with_only_for_shortened(drill_run: DrillRun) -> None:
    """The rules Prometheus loaded equal monitoring/rules except the ``for:`` of the drill's alerts."""
    shipped = {path.name: load_yaml_mapping(path) for path in rule_files()}
    assert set(drill_run.for_overrides) == set(DRILL_ALERTS)
    expected: dict[str, dict[str, Any]] = {}
    for name, content in shipped.items():
        for group in content["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in drill_run.for_overrides:
                    rule["for"] = drill_run.for_overrides[rule["alert"]]
        expected[name] = content
    assert drill_run.rules_copy == expected


def test_drill_leaves_no_process_or_directory_behind(drill_run: DrillRun) -> None:
    """Every process the stack started has exited, no child of this process lives on, the temp dir is gone."""
    names = {p.name for p in drill_run.processes}
    assert names == {"simulator", "gateway", "alertmanager", "prometheus"}, names
    assert [p.name for p in drill_run.processes if p.returncode is None] == []
    assert drill_run.leaked_children == set()
    assert not drill_run.workdir.exists()
