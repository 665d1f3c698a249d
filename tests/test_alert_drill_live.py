"""End to end: the drill scenario "live traffic fails, probes pass" against real Prometheus and Alertmanager.

Every route answers 403 to what clients ask while the probe's "ping" passes: the working flags
stay on, the breakers refuse, and the pages GatewayAllBreakersOpen and GatewayAvailabilityBudgetBurn
must reach the pager, then resolve after the heal. One run per module (about 20 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from monitoring.drill import DrillResult
from monitoring.drill_live import PAGES, LiveFailsDrill, live_options
from monitoring.stack import Stack
from monitoring.webhook import Notification
from tests.rule_support import RECEIVER_FOR_SEVERITY, alert_rules
from tests.tool_support import live_child_pids

pytestmark = pytest.mark.slow

DRILL_LIMIT = 90.0
PHASE_LIMIT = 35.0


@dataclass(frozen=True)
class LiveRun:
    """What the scenario's run left behind."""

    result: DrillResult
    output: list[str]
    notifications: list[Notification]
    leaked_children: set[int]
    seconds: float

    def explain(self) -> str:
        """The drill's output, for assertion messages."""
        return "\n".join(self.output)


@pytest_asyncio.fixture(name="live_run", scope="module", loop_scope="module")
async def fixture_live_run() -> AsyncIterator[LiveRun]:
    """Run the scenario once on its own stack, stop the stack, and record what happened."""
    children_before = live_child_pids()
    output: list[str] = []
    stack = Stack(live_options(None))
    started = time.monotonic()
    try:
        async with stack, asyncio.timeout(DRILL_LIMIT):
            try:
                result = await LiveFailsDrill(stack, out=output.append, phase_timeout=PHASE_LIMIT).run()
            finally:
                output.append(stack.log_tails())
    finally:
        stack.kill_all()
    yield LiveRun(
        result=result,
        output=output,
        notifications=list(stack.webhook.notifications),
        leaked_children=live_child_pids() - children_before,
        seconds=time.monotonic() - started,
    )


def test_scenario_passes(live_run: LiveRun) -> None:
    """The scenario reports no problem and finishes within its limit."""
    assert live_run.result.ok, f"{live_run.result.problems}\n{live_run.explain()}"
    assert live_run.seconds < DRILL_LIMIT


@pytest.mark.parametrize("alertname", sorted(PAGES))
def test_page_arrives_and_resolves_after_the_heal(live_run: LiveRun, alertname: str) -> None:
    """Each page reaches the pager after the break and a resolved notification follows the heal."""
    track = live_run.result.tracks[alertname]
    broke, healed = live_run.result.broke_at, live_run.result.healed_at
    assert broke is not None
    assert healed is not None
    assert (track.notified_firing_at or 0.0) > broke, live_run.explain()
    assert (track.notified_resolved_at or 0.0) > healed, live_run.explain()
    assert (track.notified_firing_receiver, track.notified_resolved_receiver) == ("pager", "pager")


def test_the_flags_never_said_not_working(live_run: LiveRun) -> None:
    """The probes passed throughout: GatewayUpstreamNotWorking never fired, though its ``for`` was shortened too."""
    fired = {alert.alertname for note in live_run.notifications for alert in note.alerts if alert.status == "firing"}
    assert "GatewayUpstreamNotWorking" not in fired
    assert any("every working flag still on" in line for line in live_run.output), live_run.explain()


@pytest.mark.parametrize("alertname", sorted(PAGES))
def test_pages_are_critical(alertname: str) -> None:
    """The scenario's alerts page: their critical tier routes to the pager."""
    severities = {rule.labels["severity"] for rule in alert_rules() if rule.name == alertname}
    assert "critical" in severities
    assert RECEIVER_FOR_SEVERITY["critical"] == PAGES[alertname]


def test_scenario_leaves_no_process_behind(live_run: LiveRun) -> None:
    """No child of this process lives on after the stack stopped."""
    assert live_run.leaked_children == set()
