"""Static checks of the monitoring stack: Prometheus, rules, Alertmanager, Grafana, compose, docs.

External tools (promtool, amtool, docker-compose) are required: a missing tool
fails the test instead of skipping it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from monitoring.configs import (
    ALERTMANAGER_CONFIG,
    DEFAULT_WEBHOOK_BASE,
    JOB,
    PROMETHEUS_CONFIG,
    RULES_DIR,
    alert_names,
    alertmanager_config_with_webhook,
    copy_rules,
    iter_rules,
    load_yaml_mapping,
    prometheus_config_for,
    rule_files,
    webhook_urls,
)
from tests.compose_support import (
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    compose_bind_mounts,
    load_compose,
    mount_target_of,
)
from tests.dashboard_support import (
    DASHBOARD_PATH,
    DASHBOARD_PROVIDERS_DIR,
    DASHBOARD_UID,
    DATASOURCE_UID,
    DATASOURCES_DIR,
    dashboard_queries,
    expressions_as_rule_file,
    iter_datasource_refs,
    iter_panels,
    load_dashboard,
    variables_in,
)
from tests.metric_contract import METRICS_CONTRACT, contract_allows
from tests.promql_support import label_problems, promql_metric_names
from tests.rule_support import (
    MONITORING_DOC,
    RECEIVER_FOR_SEVERITY,
    RUNBOOK,
    RUNBOOK_BASE_LABEL,
    RUNBOOK_URL_BASE,
    SLO_TARGET_RECORD,
    WATCHDOG_ALERT,
    WATCHDOG_RECEIVER,
    alert_cases,
    alert_rules,
    promql_expr_test_exprs,
    recording_rules,
    rule_test_files,
    runbook_anchors,
)
from tests.tool_support import amtool_receiver, run_tool

GRAFANA_BUILTIN_VARIABLES = frozenset({"__rate_interval", "__interval", "__range", "__interval_ms"})


@pytest.fixture(name="dashboard")
def fixture_dashboard() -> dict[str, Any]:
    """The parsed Grafana dashboard."""
    return load_dashboard()


@pytest.fixture(name="compose")
def fixture_compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    return load_compose()


@pytest.fixture(name="prometheus_config")
def fixture_prometheus_config() -> dict[str, Any]:
    """The parsed monitoring/prometheus.yml."""
    return load_yaml_mapping(PROMETHEUS_CONFIG)


@pytest.fixture(name="alertmanager_config")
def fixture_alertmanager_config() -> dict[str, Any]:
    """The parsed monitoring/alertmanager.yml."""
    return load_yaml_mapping(ALERTMANAGER_CONFIG)


@pytest.fixture(name="datasource")
def fixture_datasource() -> dict[str, Any]:
    """The single provisioned Prometheus datasource."""
    sources = [
        source
        for path in sorted(DATASOURCES_DIR.glob("*.yml"))
        for source in load_yaml_mapping(path).get("datasources", [])
    ]
    assert len(sources) == 1, sources
    return dict(sources[0])


def _compose_service_port(compose: dict[str, Any], address: str) -> None:
    """Assert that ``host:port`` names a compose service."""
    host, _, port = address.partition(":")
    assert host in compose["services"], f"{address}: no compose service {host!r}"
    assert port.isdigit(), address


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_config_passes_promtool() -> None:
    """promtool accepts prometheus.yml and the rule files it references."""
    result = run_tool("promtool", "check", "config", PROMETHEUS_CONFIG)
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_config_scrapes_gateway_and_alerts_to_alertmanager(
    prometheus_config: dict[str, Any], compose: dict[str, Any]
) -> None:
    """prometheus.yml scrapes job flowgpt-gateway on both replicas and sends alerts to alertmanager:9093."""
    assert prometheus_config["global"]["scrape_interval"] == "15s"
    assert prometheus_config["global"]["evaluation_interval"] == "15s"
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    targets = [t for sc in jobs[JOB]["static_configs"] for t in sc["targets"]]
    assert targets == ["gateway-1:8080", "gateway-2:8080"]
    alertmanagers = [
        t for am in prometheus_config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    ]
    assert alertmanagers == ["alertmanager:9093"]
    for address in [*targets, *alertmanagers]:
        _compose_service_port(compose, address)


def test_prometheus_rule_files_are_relative_and_match_every_rule_file(prometheus_config: dict[str, Any]) -> None:
    """rule_files uses a relative glob that picks up every file in monitoring/rules."""
    patterns = prometheus_config["rule_files"]
    assert all(not Path(pattern).is_absolute() for pattern in patterns), patterns
    matched = {path for pattern in patterns for path in PROMETHEUS_CONFIG.parent.glob(pattern)}
    assert matched == set(rule_files())
    assert rule_files(), "no rule files"


def test_live_prometheus_config_helper_output_passes_promtool(tmp_path: Path) -> None:
    """prometheus_config_for() yields a config promtool accepts, with absolute rule paths."""
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config_for(target="127.0.0.1:18080", alertmanager="127.0.0.1:19093"), encoding="utf-8")
    result = run_tool("promtool", "check", "config", config, cwd=tmp_path)
    assert f"{len(rule_files())} rules found" in result.stdout or "SUCCESS" in result.stdout


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_rule_file_passes_promtool(path: Path) -> None:
    """promtool check rules accepts each rule file."""
    run_tool("promtool", "check", "rules", path)


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test in monitoring/tests passes."""
    files = rule_test_files()
    assert files, "no promtool test files"
    result = run_tool("promtool", "test", "rules", *files, timeout=300)
    assert "FAILED" not in result.stdout


def test_recording_and_alerting_rules_live_in_separate_files() -> None:
    """No rule file mixes recording and alerting rules."""
    kinds: dict[Path, set[str]] = defaultdict(set)
    for rule in iter_rules():
        kinds[rule.file].add(rule.kind)
    assert all(len(found) == 1 for found in kinds.values()), dict(kinds)
    assert {"alert", "record"} <= set().union(*kinds.values())


def test_recording_rule_names_follow_level_metric_operations() -> None:
    """Recording rules are named level:metric:operations."""
    for rule in recording_rules():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule.name), rule.name


def test_expected_alerts_exist() -> None:
    """The rule files define every alert the runbook and Alertmanager routes rely on."""
    assert alert_names() >= {
        "GatewayDown",
        "GatewayUpstreamNotWorking",
        "GatewayCircuitOpen",
        "GatewayUpstreamErrorBudgetBurn",
        "GatewayAvailabilityBudgetBurn",
        "GatewayAllBreakersOpen",
        "GatewayJSONParseFailures",
        "GatewayUpstreamSlow",
        "GatewayHealthProbeStalled",
        "GatewayOverloaded",
        WATCHDOG_ALERT,
    }


def test_every_alert_has_severity_summary_description_and_runbook_url() -> None:
    """Each alert has severity warning|critical (none only for Watchdog) and the three annotations."""
    for rule in alert_rules():
        allowed = {"none"} if rule.name == WATCHDOG_ALERT else {"warning", "critical"}
        assert rule.labels.get("severity") in allowed, (rule.name, rule.labels)
        assert set(rule.annotations) >= {"summary", "description", "runbook_url"}, rule.name
        assert all(rule.annotations[key].strip() for key in ("summary", "description")), rule.name


def test_every_runbook_url_points_at_a_runbook_section() -> None:
    """Each runbook_url is the runbook base plus an anchor that exists in docs/runbook.md."""
    anchors = runbook_anchors()
    for rule in alert_rules():
        base, _, anchor = rule.annotations["runbook_url"].partition("#")
        assert base == RUNBOOK_URL_BASE, rule.name
        assert anchor == rule.name.lower(), rule.name
        assert anchor in anchors, f"{rule.name}: no section #{anchor} in {RUNBOOK}"


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    """Each alert (and each severity tier) is tested firing; each but Watchdog is also tested silent."""
    cases = alert_cases()
    fired = {(case.alertname, labels.get("severity")) for case in cases for labels in case.exp_labels}
    silent = {case.alertname for case in cases if not case.fires}
    for rule in alert_rules():
        assert (rule.name, rule.labels["severity"]) in fired, f"{rule.name} {rule.labels} never tested firing"
        if rule.name != WATCHDOG_ALERT:
            assert rule.name in silent, f"{rule.name} has no case where it must not fire"


def test_stale_series_trap_is_covered() -> None:
    """A promtool case checks that a dead gateway resolves GatewayUpstreamNotWorking but fires GatewayDown."""
    by_moment: dict[tuple[Path, int, str], dict[str, bool]] = defaultdict(dict)
    for case in alert_cases():
        by_moment[(case.file, case.test_index, case.eval_time)][case.alertname] = case.fires
    assert any(
        outcome.get("GatewayUpstreamNotWorking") is False and outcome.get("GatewayDown") is True
        for outcome in by_moment.values()
    )


# Recorded for people and other Prometheus servers to query, on purpose read by no alert (the
# dashboard shows the raw histogram, which the live test can check against /metrics).
QUERY_ONLY_RECORDS = ("gateway:overhead_seconds:p99_5m",)


def test_every_recording_rule_has_a_promql_expr_test_and_a_user() -> None:
    """Each recording rule is checked by a promql_expr_test and read by an alert or the dashboard."""
    tested = " ".join(promql_expr_test_exprs())
    readers = " ".join([rule.expr for rule in alert_rules()] + [q.expr for q in dashboard_queries()])
    for rule in recording_rules():
        assert re.search(rf"{re.escape(rule.name)}\b", tested), f"{rule.name} has no promql_expr_test"
        if rule.name not in (SLO_TARGET_RECORD, *QUERY_ONLY_RECORDS):
            assert re.search(rf"{re.escape(rule.name)}\b", readers), f"{rule.name} is recorded but unused"


def test_slo_target_is_defined_in_one_place() -> None:
    """The SLO target is recorded once and every burn-rate threshold of both SLOs derives from it."""
    targets = [rule for rule in recording_rules() if rule.name == SLO_TARGET_RECORD]
    assert len(targets) == 1
    assert re.fullmatch(r"vector\(0\.\d+\)", targets[0].expr.strip()), targets[0].expr
    client = [rule for rule in alert_rules() if rule.name == "GatewayAvailabilityBudgetBurn"]
    assert {rule.labels["severity"] for rule in client} == {"critical", "warning"}
    attempts = [rule for rule in alert_rules() if rule.name == "GatewayUpstreamErrorBudgetBurn"]
    assert {rule.labels["severity"] for rule in attempts} == {"warning"}, "the attempt-level SLO is a ticket"
    for rule in client + attempts:
        assert SLO_TARGET_RECORD in rule.expr
        assert "0.99" not in rule.expr, "hard-coded SLO in an alert"
        assert "0.01" not in rule.expr, "hard-coded error budget in an alert"


def test_runbook_base_is_one_setting_and_no_rule_links_elsewhere() -> None:
    """The runbook base URL is the one external label in prometheus.yml; no rule file holds a URL."""
    labels = load_yaml_mapping(PROMETHEUS_CONFIG)["global"]["external_labels"]
    assert urlsplit(labels[RUNBOOK_BASE_LABEL]).scheme in {"http", "https"}
    for path in rule_files():
        assert "://" not in path.read_text(encoding="utf-8"), f"{path} holds a URL"


def test_rules_reference_only_contract_metrics() -> None:
    """Every metric a rule reads is in the gateway's metrics contract, up, or a recorded series."""
    recorded = {rule.name for rule in recording_rules()}
    for rule in iter_rules():
        unknown = {name for name in promql_metric_names(rule.expr) if not contract_allows(name, recorded)}
        assert not unknown, f"{rule.name}: {unknown}"
        assert not label_problems(rule.expr), (rule.name, label_problems(rule.expr))


def test_rules_select_the_gateway_job() -> None:
    """Rules reading gateway metrics select job="flowgpt-gateway" so other jobs cannot trigger them."""
    for rule in iter_rules():
        if "gateway_" in rule.expr or "up{" in rule.expr:
            assert f'job="{JOB}"' in rule.expr, rule.name


# --------------------------------------------------------------------------- Alertmanager


def test_alertmanager_config_passes_amtool() -> None:
    """amtool check-config accepts alertmanager.yml."""
    result = run_tool("amtool", "check-config", ALERTMANAGER_CONFIG)
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "GatewayDown", "severity": "critical", "job": JOB}, RECEIVER_FOR_SEVERITY["critical"]),
        (
            {"alertname": "GatewayUpstreamErrorBudgetBurn", "severity": "critical", "provider": "flowgpt"},
            RECEIVER_FOR_SEVERITY["critical"],
        ),
        ({"alertname": "GatewayCircuitOpen", "severity": "warning", "job": JOB}, RECEIVER_FOR_SEVERITY["warning"]),
        ({"alertname": WATCHDOG_ALERT, "severity": "none"}, WATCHDOG_RECEIVER),
        ({"alertname": WATCHDOG_ALERT, "severity": "critical"}, WATCHDOG_RECEIVER),
        ({"alertname": "SomethingUnlabelled"}, RECEIVER_FOR_SEVERITY["warning"]),
    ],
    ids=["critical", "critical-burn", "warning", "watchdog", "watchdog-any-severity", "fallback"],
)
def test_alertmanager_routes_alerts_to_the_right_receiver(labels: dict[str, str], receiver: str) -> None:
    """amtool config routes test sends each kind of alert to its receiver, and only there."""
    assert amtool_receiver(labels) == receiver


def test_alertmanager_routes_every_rule_severity() -> None:
    """Every severity used by a rule routes to the receiver designed for it."""
    for rule in alert_rules():
        expected = WATCHDOG_RECEIVER if rule.name == WATCHDOG_ALERT else RECEIVER_FOR_SEVERITY[rule.labels["severity"]]
        assert amtool_receiver({"alertname": rule.name, **rule.labels}) == expected, rule.name


def test_alertmanager_groups_and_repeats_watchdog(alertmanager_config: dict[str, Any]) -> None:
    """Alerts group by alertname/job/provider; the Watchdog route repeats quickly."""
    route = alertmanager_config["route"]
    assert route["group_by"] == ["alertname", "job", "provider"]
    watchdog = [r for r in route["routes"] if r["receiver"] == WATCHDOG_RECEIVER]
    assert len(watchdog) == 1
    assert watchdog[0]["repeat_interval"] in {"1m", "2m", "5m"}


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Evaluate Alertmanager matcher strings against a label set."""
    for matcher in matchers:
        found = re.fullmatch(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\s*', matcher)
        assert found, matcher
        label, op, value = found.groups()
        actual = labels.get(label, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def test_gateway_down_inhibits_every_other_gateway_alert(alertmanager_config: dict[str, Any]) -> None:
    """An inhibit rule lets GatewayDown silence every other gateway alert of the same job."""
    rules = [
        rule
        for rule in alertmanager_config["inhibit_rules"]
        if _matches(rule["source_matchers"], {"alertname": "GatewayDown", "severity": "critical", "job": JOB})
    ]
    down_rules = [rule for rule in rules if "job" in rule["equal"]]
    assert down_rules
    for name in alert_names() - {"GatewayDown", WATCHDOG_ALERT}:
        severities = {rule.labels["severity"] for rule in alert_rules() if rule.name == name}
        for severity in severities:
            target = {"alertname": name, "severity": severity, "job": JOB}
            assert any(_matches(rule["target_matchers"], target) for rule in down_rules), name
    gateway_down = {"alertname": "GatewayDown", "severity": "critical", "job": JOB}
    assert not any(_matches(rule["target_matchers"], gateway_down) for rule in down_rules)
    assert not any(_matches(rule["target_matchers"], {"alertname": WATCHDOG_ALERT}) for rule in down_rules)


def test_critical_inhibits_warning_of_the_same_alert(alertmanager_config: dict[str, Any]) -> None:
    """A critical alert inhibits the warning with the same alertname and provider."""
    assert any(
        _matches(rule["source_matchers"], {"severity": "critical"})
        and _matches(rule["target_matchers"], {"severity": "warning"})
        and {"alertname", "provider"} <= set(rule["equal"])
        for rule in alertmanager_config["inhibit_rules"]
    )


def test_webhook_urls_share_the_default_base(alertmanager_config: dict[str, Any]) -> None:
    """Every receiver is a webhook under the documented default base URL."""
    urls = webhook_urls(alertmanager_config)
    assert set(urls) == {*RECEIVER_FOR_SEVERITY.values(), WATCHDOG_RECEIVER}
    assert all(hooks and all(u.startswith(DEFAULT_WEBHOOK_BASE + "/") for u in hooks) for hooks in urls.values())


@pytest.mark.parametrize("timings", [None, {"group_wait": "0s", "group_interval": "1s", "repeat_interval": "5s"}])
def test_webhook_rewrite_for_loopback_passes_amtool(tmp_path: Path, timings: dict[str, str] | None) -> None:
    """alertmanager_config_with_webhook() points every receiver at loopback and stays valid."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        alertmanager_config_with_webhook("http://127.0.0.1:18999/hook", timings=timings), encoding="utf-8"
    )
    run_tool("amtool", "check-config", config)
    parsed = load_yaml_mapping(config)
    urls = webhook_urls(parsed)
    assert urls[RECEIVER_FOR_SEVERITY["critical"]] == ["http://127.0.0.1:18999/hook/pager"]
    assert DEFAULT_WEBHOOK_BASE not in config.read_text(encoding="utf-8")
    if timings:
        routes = [parsed["route"], *parsed["route"]["routes"]]
        assert {route.get("group_wait", "0s") for route in routes} == {"0s"}
    assert amtool_receiver({"alertname": "GatewayDown", "severity": "critical"}, config) == "pager"


def test_rule_copy_with_short_for_passes_promtool(tmp_path: Path) -> None:
    """copy_rules() writes valid rule files with the requested for: durations."""
    dest = copy_rules(tmp_path / "rules", for_overrides={"GatewayUpstreamNotWorking": "2s"})
    copied = sorted(dest.glob("*.yml"))
    assert [p.name for p in copied] == [p.name for p in rule_files()]
    run_tool("promtool", "check", "rules", *copied)
    changed = [rule for rule in iter_rules(copied) if rule.name == "GatewayUpstreamNotWorking"]
    assert [rule.for_ for rule in changed] == ["2s"]
    with pytest.raises(ValueError, match="no such alerts"):
        copy_rules(tmp_path / "other", for_overrides={"NoSuchAlert": "1s"})


# --------------------------------------------------------------------------- Grafana


def test_datasource_is_the_default_prometheus_with_fixed_uid(
    datasource: dict[str, Any], compose: dict[str, Any]
) -> None:
    """The provisioned datasource is Prometheus, default, with the uid the dashboard uses."""
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["isDefault"] is True
    assert datasource["access"] == "proxy"
    url = urlsplit(datasource["url"])
    assert url.hostname in compose["services"]
    assert url.port == 9090


def test_dashboard_provider_path_matches_compose_mount() -> None:
    """The file provider reads the directory docker-compose mounts grafana/dashboards into."""
    providers = [
        provider
        for path in sorted(DASHBOARD_PROVIDERS_DIR.glob("*.yml"))
        for provider in load_yaml_mapping(path)["providers"]
    ]
    assert len(providers) == 1
    assert providers[0]["type"] == "file"
    mounts = [m for m in compose_bind_mounts() if m.service == "grafana"]
    assert providers[0]["options"]["path"] == mount_target_of(DASHBOARD_PATH.parent, mounts)
    assert mount_target_of(DATASOURCES_DIR.parent, mounts) == "/etc/grafana/provisioning"


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    """The dashboard has a stable uid, a title and a current schemaVersion."""
    assert dashboard["uid"] == DASHBOARD_UID
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None


def test_dashboard_has_no_export_placeholders() -> None:
    """No __inputs or ${DS_...} placeholders, which file provisioning cannot resolve."""
    text = DASHBOARD_PATH.read_text(encoding="utf-8")
    assert "__inputs" not in text
    assert "${DS_" not in text
    assert "__requires" not in text


def test_dashboard_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    """Every panel, row included, has its own id."""
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), ids


def test_dashboard_grid_positions_fit_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    """Every gridPos fits in 24 columns and no two panels overlap."""
    cells: dict[tuple[int, int], int] = {}
    for panel in iter_panels(dashboard):
        pos = panel["gridPos"]
        assert min(pos["w"], pos["h"]) > 0, panel["id"]
        assert min(pos["x"], pos["y"]) >= 0, panel["id"]
        assert pos["x"] + pos["w"] <= 24, panel["id"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap"
                cells[(x, y)] = panel["id"]


def test_dashboard_datasources_are_the_provisioned_uid(dashboard: dict[str, Any], datasource: dict[str, Any]) -> None:
    """Every datasource reference is {type: prometheus, uid: <provisioned uid>}, on panels and targets."""
    refs = list(iter_datasource_refs(dashboard))
    assert refs
    assert all(ref == {"type": "prometheus", "uid": datasource["uid"]} for ref in refs), refs
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["id"]
        assert panel["targets"], panel["id"]
        assert all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"]), panel["id"]


def test_dashboard_panels_set_units(dashboard: dict[str, Any]) -> None:
    """Every non-row panel sets fieldConfig.defaults.unit."""
    for panel in iter_panels(dashboard):
        if panel["type"] != "row":
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_dashboard_starts_with_an_overview_row_of_stats(dashboard: dict[str, Any]) -> None:
    """The first row is Overview with stats for gateway up, upstream working, breaker and error ratio."""
    panels = dashboard["panels"]
    assert (panels[0]["type"], panels[0]["title"]) == ("row", "Overview")
    overview = []
    for panel in panels[1:]:
        if panel["type"] == "row":
            break
        overview.append(panel)
    assert overview
    assert all(panel["type"] == "stat" for panel in overview)
    exprs = " ".join(t["expr"] for panel in overview for t in panel["targets"])
    for metric in ("up{", "gateway_provider_working", "gateway_breaker_state", "gateway_upstream_errors_total"):
        assert metric in exprs, metric


def test_dashboard_ranges_use_rate_interval() -> None:
    """Every range selector in the dashboard is [$__rate_interval]."""
    for query in dashboard_queries(raw=True):
        ranges = re.findall(r"\[([^\]]*)\]", query.expr)
        assert all(r == "$__rate_interval" for r in ranges), (query.name, ranges)


def test_dashboard_variables_are_defined(dashboard: dict[str, Any]) -> None:
    """Every variable a query uses is a dashboard variable or a Grafana built-in."""
    defined = {variable["name"] for variable in dashboard["templating"]["list"]} | GRAFANA_BUILTIN_VARIABLES
    for query in dashboard_queries(raw=True):
        assert variables_in(query.expr) <= defined, query.name


def test_dashboard_references_only_contract_metrics() -> None:
    """Every metric the dashboard reads is in the contract (or up, or a recording rule), with valid labels."""
    recorded = {rule.name for rule in recording_rules()}
    for query in dashboard_queries():
        unknown = {name for name in promql_metric_names(query.expr) if not contract_allows(name, recorded)}
        assert not unknown, f"{query.name} {query.panel_title}: {unknown}"
        assert not label_problems(query.expr), (query.name, label_problems(query.expr))


def test_dashboard_shows_every_contract_metric() -> None:
    """Each metric in the contract appears on at least one panel."""
    used = {name for query in dashboard_queries() for name in promql_metric_names(query.expr)}
    for spec in METRICS_CONTRACT:
        assert used & spec.series_names(), f"{spec.name} is not on the dashboard"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """promtool parses every panel expression once Grafana variables are substituted."""
    queries = dashboard_queries()
    assert queries
    rules = tmp_path / "dashboard_exprs.yml"
    rules.write_text(expressions_as_rule_file({q.name: q.expr for q in queries}), encoding="utf-8")
    result = run_tool("promtool", "check", "rules", rules)
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


# --------------------------------------------------------------------------- compose and image


def test_compose_file_is_valid() -> None:
    """docker-compose config -q accepts the compose file (keys, depends_on targets)."""
    run_tool("docker-compose", "-f", COMPOSE_FILE, "config", "-q")


def test_compose_bind_mounts_exist_and_are_read_only() -> None:
    """Every host path the compose file mounts exists and is mounted read-only."""
    mounts = compose_bind_mounts()
    assert mounts
    for mount in mounts:
        assert mount.source.exists(), f"{mount.service}: {mount.source} missing"
        assert mount.read_only, f"{mount.service}: {mount.source} is mounted writable"


def test_compose_mounts_prometheus_config_next_to_its_rules() -> None:
    """The rules directory lands where prometheus.yml's relative rule_files glob looks."""
    mounts = [m for m in compose_bind_mounts() if m.service == "prometheus"]
    config_target = Path(mount_target_of(PROMETHEUS_CONFIG, mounts))
    assert Path(mount_target_of(RULES_DIR, mounts)) == config_target.parent / "rules"
    alertmanager_mounts = [m for m in compose_bind_mounts() if m.service == "alertmanager"]
    assert mount_target_of(ALERTMANAGER_CONFIG, alertmanager_mounts)


def test_compose_services_and_dependencies(compose: dict[str, Any]) -> None:
    """The services exist, start in order and are wired to each other; both replicas share one Redis."""
    services = compose["services"]
    replicas = ("gateway-1", "gateway-2")
    assert set(services) >= {*replicas, "redis", "simulator", "prometheus", "alertmanager", "grafana"}
    for replica in replicas:
        env = services[replica]["environment"]
        assert env["GATEWAY_UPSTREAM_URL"] == "http://simulator:8090/v3/chat-anonymous"
        assert env["GATEWAY_HOST"] == "0.0.0.0"
        assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
        assert services["simulator"]["image"] == services[replica]["image"]
    assert services["simulator"]["command"] == ["sim", "--host", "0.0.0.0", "--port", "8090"]
    assert "ports" not in services["redis"]

    def deps(name: str) -> set[str]:
        raw = services[name].get("depends_on", [])
        return set(raw)

    assert all({"simulator", "redis"} <= deps(replica) for replica in replicas)
    assert {*replicas, "alertmanager"} <= deps("prometheus")
    assert "prometheus" in deps("grafana")


def test_compose_images_are_pinned_and_ports_are_loopback(compose: dict[str, Any]) -> None:
    """Third-party images carry an explicit version tag and every port is published on 127.0.0.1."""
    for name, service in compose["services"].items():
        if "build" not in service:
            image = service["image"]
            assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: {image} is not pinned"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    named = {source for service in compose["services"].values() for source in service.get("volumes", [])}
    assert {v.split(":")[0] for v in named if not v.startswith(".")} <= set(compose["volumes"])


def test_dockerfile_follows_the_image_contract() -> None:
    """Pinned slim base, pip install ., non-root user, port 8080, stdlib healthcheck, CLI entrypoint."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11\.\d+-slim(-bookworm)?\s*$", text, flags=re.MULTILINE)
    assert re.search(r"^RUN pip install \"?\.(\[fast\])?\"? ", text, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users
    assert users[-1] not in {"root", "0"}
    assert re.search(r"^EXPOSE 8080\s*$", text, flags=re.MULTILINE)
    healthcheck = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, flags=re.MULTILINE | re.DOTALL)
    assert healthcheck is not None
    assert "urllib.request" in healthcheck.group(0)
    assert "/healthz" in healthcheck.group(0)
    assert "curl" not in healthcheck.group(0)
    assert re.search(r'^ENTRYPOINT \["flowgpt-gateway"\]\s*$', text, flags=re.MULTILINE)
    assert re.search(r'^CMD \["serve", "--host", "0\.0\.0\.0"\]\s*$', text, flags=re.MULTILINE)


def test_dockerignore_keeps_build_inputs_and_drops_the_rest() -> None:
    """.dockerignore drops .git and .venv but never pyproject.toml, README.md or the package."""
    patterns = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines() if line.strip()}
    assert {".git", ".venv"} <= patterns
    assert not patterns & {"gateway", "pyproject.toml", "README.md", "*", "**"}


# --------------------------------------------------------------------------- docs


def test_monitoring_doc_explains_slo_thresholds_and_webhook() -> None:
    """docs/monitoring.md tells how to change the SLO target, the thresholds and the webhook URL."""
    text = MONITORING_DOC.read_text(encoding="utf-8")
    for needle in (SLO_TARGET_RECORD, DEFAULT_WEBHOOK_BASE, "alertmanager.yml", "promtool test rules"):
        assert needle in text, needle


def test_runbook_sections_cover_exactly_the_alerts() -> None:
    """The runbook has a section per alert and no section for an alert that does not exist."""
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\w+)\s*$", text, flags=re.MULTILINE))
    assert sections == alert_names()


def test_runbook_mentions_how_to_confirm_each_alert() -> None:
    """Each runbook section has meaning, confirmation and action parts."""
    text = RUNBOOK.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert parts
    for part in parts:
        name = part.splitlines()[0].strip()
        for heading in ("Meaning", "Confirm", "Act"):
            assert re.search(rf"^\*\*{heading}", part, flags=re.MULTILINE), f"{name}: no **{heading}** part"


def test_yaml_files_parse() -> None:
    """All monitoring and provisioning YAML parses (catches tabs and bad indentation early)."""
    paths = [
        PROMETHEUS_CONFIG,
        ALERTMANAGER_CONFIG,
        COMPOSE_FILE,
        *rule_files(),
        *rule_test_files(),
        *DATASOURCES_DIR.glob("*.yml"),
        *DASHBOARD_PROVIDERS_DIR.glob("*.yml"),
    ]
    for path in paths:
        assert yaml.safe_load(path.read_text(encoding="utf-8")) is not None, path
