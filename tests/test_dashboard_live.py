"""Every dashboard panel query against a real Prometheus scraping a real gateway under real traffic.

No Grafana runs here, so the dashboard is checked the way Grafana would use it:
each target's PromQL (``$instance`` = All, ``$__rate_interval`` = 15s, which
suits 1 s scrapes) runs as a range query over the test's traffic and must return
at least one series with at least one number (not only NaN). The traffic covers
what the panels show: successes (plain and streamed), garbage NDJSON lines,
upstream errors with a retry, a breaker trip, refusals while not working, the
recovery, and the health probes running all along.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from monitoring.clients import Series
from monitoring.configs import JOB
from monitoring.processes import ManagedProcess, wait_until
from monitoring.stack import FAST_GATEWAY_ENV, Stack, StackOptions
from tests.dashboard_support import PanelQuery, dashboard_queries
from tests.promql_support import promql_metric_names
from tests.redis_support import RedisServer
from tests.tool_support import live_child_pids

pytestmark = pytest.mark.slow

RATE_INTERVAL = "15s"
LIVE_LIMIT = 75.0
QUERIES = dashboard_queries(rate_interval=RATE_INTERVAL)

# Counters the traffic must have moved (a panel over all-zero series would prove little).
TRAFFIC_EVIDENCE = {
    "successful chats": f'gateway_http_requests_total{{job="{JOB}", route="/v1/chat/completions", code="200"}}',
    "garbage lines": f'gateway_upstream_json_parse_failures_total{{job="{JOB}"}}',
    "upstream 5xx": f'gateway_upstream_errors_total{{job="{JOB}", kind="http_status"}}',
    "retries": f'gateway_upstream_retries_total{{job="{JOB}"}}',
    "breaker opened": f'gateway_breaker_transitions_total{{job="{JOB}", to_state="open"}}',
    "breaker closed again": f'gateway_breaker_transitions_total{{job="{JOB}", to_state="closed"}}',
    "refused while not working": f'gateway_admission_rejections_total{{job="{JOB}", reason="not_working"}}',
    "failed probes": f'gateway_health_probes_total{{job="{JOB}", result="failure"}}',
    "successful probes": f'gateway_health_probes_total{{job="{JOB}", result="success"}}',
}
FAULT_SEEN = (
    f'gateway_provider_working{{job="{JOB}"}} == 0 and on (job, instance) '
    f'gateway_breaker_state{{job="{JOB}", state="open"}} == 1'
)
RECOVERY_SEEN = (
    f'gateway_provider_working{{job="{JOB}"}} == 1 and on (job, instance) '
    f'gateway_breaker_state{{job="{JOB}", state="closed"}} == 1'
)

# Panels that must show the fault, not just some number: (aggregation over the run, value).
FAULT_VISIBLE = {
    "Gateway up": ("max", 1.0),  # max: a scrape may time out on a loaded machine
    "Upstream working": ("min", 0.0),
    "Upstream working flag": ("min", 0.0),
    "Circuit breaker": ("max", 2.0),  # 2 = open
    "Breaker state": ("max", 2.0),
}


@dataclass(frozen=True)
class LiveRun:
    """Query results and the gateway's exposition, gathered while the stack ran."""

    panels: dict[str, list[Series]]
    evidence: dict[str, float]
    exposed_names: set[str]
    processes: list[ManagedProcess]
    leaked_children: set[int]


async def drive_traffic(stack: Stack) -> None:
    """Successes, garbage lines, errors and a breaker trip, refusals, recovery, successes again."""
    for index in range(4):
        result = await stack.gateway.chat(f"hello {index}", stream=index % 2 == 1)
        assert result.status == 200, result
    async with stack.session.get(f"{stack.gateway_url}/v1/models") as response:
        assert response.status == 200
    await stack.simulator.set_faults({"garbage_ratio": 1.0})
    for index in range(3):
        result = await stack.gateway.chat(f"garbage {index}")
        assert result.status == 200, result  # the decoder skips bad lines; the answer is complete
    await stack.simulator.set_faults({"http_status": 503})
    await stack.gateway.trip_breaker()
    await stack.gateway.wait_working(False)
    refused = await stack.gateway.chat("refused")
    assert (refused.status, refused.code) == (503, "upstream_not_working")
    # Hold the fault until a scrape has seen it; it may otherwise fall between two scrapes.
    await prometheus_sees(stack, FAULT_SEEN, "the open breaker and working=0")
    await stack.simulator.heal()
    await stack.gateway.wait_working(True)
    await prometheus_sees(stack, RECOVERY_SEEN, "the closed breaker and working=1")
    for index in range(3):
        result = await stack.gateway.chat(f"again {index}", stream=index == 0)
        assert result.status == 200, result


async def prometheus_sees(stack: Stack, expr: str, what: str) -> None:
    """Wait until the filter ``expr`` returns a series in Prometheus (i.e. a scrape saw the state)."""

    async def seen() -> bool:
        return bool(await stack.prometheus.query(expr))

    await wait_until(seen, within=20.0, what=f"Prometheus to see {what}", interval=0.2)


def exposition_names(text: str) -> set[str]:
    """Sample names in a text exposition (``_bucket``, ``_count``, ``_total``... as exposed)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


@pytest_asyncio.fixture(name="live", scope="module", loop_scope="module")
async def fixture_live() -> AsyncIterator[LiveRun]:
    """Start the stack, drive the traffic, wait for a scrape after it, run every panel query."""
    children_before = live_child_pids()
    # With Redis the gateway runs as a fleet member, so the fleet panels have their series too.
    redis = RedisServer()
    redis.start()
    stack = Stack(StackOptions(gateway_env={**FAST_GATEWAY_ENV, "GATEWAY_REDIS_URL": redis.url}))
    try:
        async with stack, asyncio.timeout(LIVE_LIMIT):
            try:
                await drive_traffic(stack)
                await stack.prometheus.wait_for_scrape_after(time.time())
                end = time.time()
                panels = {
                    query.name: await stack.prometheus.query_range(query.expr, start=stack.started_at, end=end)
                    for query in QUERIES
                }
                evidence = {
                    what: max((s.values[0][1] for s in await stack.prometheus.query(f"sum({expr})")), default=0.0)
                    for what, expr in TRAFFIC_EVIDENCE.items()
                }
                exposed = exposition_names(await stack.gateway.metrics())
            except BaseException:
                print(stack.log_tails())  # shown by pytest with the error
                raise
    finally:
        stack.kill_all()  # a no-op after a clean stop
        redis.stop()
    yield LiveRun(
        panels=panels,
        evidence=evidence,
        exposed_names=exposed,
        processes=list(stack.processes),
        leaked_children=live_child_pids() - children_before,
    )


@pytest.mark.parametrize("what", sorted(TRAFFIC_EVIDENCE))
def test_traffic_moved_the_counters(live: LiveRun, what: str) -> None:
    """The scenario produced what the panels are meant to show, as seen by Prometheus."""
    assert live.evidence[what] > 0, f"{what}: {TRAFFIC_EVIDENCE[what]} stayed at 0"


@pytest.mark.parametrize("query", QUERIES, ids=[query.name for query in QUERIES])
def test_panel_query_returns_data(live: LiveRun, query: PanelQuery) -> None:
    """The panel's query returns at least one series with at least one number during the traffic."""
    series = live.panels[query.name]
    assert series, f"{query.panel_title!r} returned no series: {query.expr}"
    assert any(s.has_finite_value() for s in series), f"{query.panel_title!r} returned only NaN: {query.expr}"


@pytest.mark.parametrize("query", QUERIES, ids=[query.name for query in QUERIES])
def test_panel_metric_names_are_exposed_by_the_gateway(live: LiveRun, query: PanelQuery) -> None:
    """Every metric the query reads appears in the gateway's /metrics (``up`` comes from Prometheus)."""
    missing = promql_metric_names(query.expr) - live.exposed_names - {"up"}
    assert not missing, f"{query.panel_title!r} reads {sorted(missing)}, not in /metrics"


@pytest.mark.parametrize("title", sorted(FAULT_VISIBLE))
def test_panel_shows_the_fault(live: LiveRun, title: str) -> None:
    """Status panels reach the values of the drill's states (breaker open = 2, not working = 0)."""
    aggregate, expected = FAULT_VISIBLE[title]
    queries = [query for query in QUERIES if query.panel_title == title]
    assert len(queries) == 1, f"expected one query in panel {title!r}, found {len(queries)}"
    values = [v for s in live.panels[queries[0].name] for _, v in s.values]
    assert (min if aggregate == "min" else max)(values) == expected, values


def test_live_run_leaves_no_process_behind(live: LiveRun) -> None:
    """Every process the stack started has exited and no child of this process lives on."""
    assert [p.name for p in live.processes if p.returncode is None] == []
    assert live.leaked_children == set()
