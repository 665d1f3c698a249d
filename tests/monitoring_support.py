"""Helpers for tests of the monitoring stack: static checks and live tests.

What lives here:
- the metrics contract of the gateway (``METRICS_CONTRACT``), the one list every
  rule, dashboard and live test checks metric names against;
- loaders for the rule files, promtool test files, dashboard, compose file;
- ``dashboard_queries``: every panel's PromQL with ``$__rate_interval`` and the
  dashboard variables substituted, ready to send to a real Prometheus;
- ``promql_metric_names`` / ``promql_selectors``: a small PromQL scanner (no
  parser dependency) good enough to find metric names and label matchers;
- rewriters that point copies of the configs at loopback services
  (``alertmanager_config_with_webhook``, ``prometheus_config_for``, ``copy_rules``;
  they live in ``monitoring.configs`` and are re-exported here);
- ``live_child_pids``: for live tests that must leave no process behind;
- ``run_tool``: runs promtool, amtool, docker-compose and fails (never skips)
  when a tool is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import pytest
import yaml

from gateway.errors import UPSTREAM_ERROR_KINDS

# The config rewriters live with the configs (the alert drill uses them too); re-exported here.
from monitoring.configs import ALERTMANAGER_CONFIG as ALERTMANAGER_CONFIG
from monitoring.configs import DEFAULT_WEBHOOK_BASE as DEFAULT_WEBHOOK_BASE
from monitoring.configs import JOB as JOB
from monitoring.configs import MONITORING_DIR as MONITORING_DIR
from monitoring.configs import PROMETHEUS_CONFIG as PROMETHEUS_CONFIG
from monitoring.configs import RULES_DIR as RULES_DIR
from monitoring.configs import alertmanager_config_with_webhook as alertmanager_config_with_webhook
from monitoring.configs import copy_rules as copy_rules
from monitoring.configs import prometheus_config_for as prometheus_config_for
from monitoring.configs import webhook_urls as webhook_urls

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
RULE_TESTS_DIR: Final = MONITORING_DIR / "tests"
GRAFANA_DIR: Final = REPO_ROOT / "grafana"
DATASOURCES_DIR: Final = GRAFANA_DIR / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR: Final = GRAFANA_DIR / "provisioning" / "dashboards"
DASHBOARD_PATH: Final = GRAFANA_DIR / "dashboards" / "flowgpt-gateway.json"
COMPOSE_FILE: Final = REPO_ROOT / "docker-compose.yml"
DOCKERFILE: Final = REPO_ROOT / "Dockerfile"
DOCKERIGNORE: Final = REPO_ROOT / ".dockerignore"
RUNBOOK: Final = REPO_ROOT / "docs" / "runbook.md"
MONITORING_DOC: Final = REPO_ROOT / "docs" / "monitoring.md"

PROVIDER: Final = "flowgpt"
DASHBOARD_UID: Final = "flowgpt-gateway"
DATASOURCE_UID: Final = "prometheus"
SLO_TARGET_RECORD: Final = "gateway:upstream_slo:target"
RUNBOOK_URL_BASE: Final = "https://github.com/flowgpt-gateway/flowgpt-gateway/blob/main/docs/runbook.md"
# Receiver each kind of alert must reach.
RECEIVER_FOR_SEVERITY: Final[Mapping[str, str]] = {"critical": "pager", "warning": "ticket"}
WATCHDOG_ALERT: Final = "Watchdog"
WATCHDOG_RECEIVER: Final = "watchdog"

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric the gateway exports at /metrics."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str

    def series_names(self) -> frozenset[str]:
        """Names of the series Prometheus stores for this metric."""
        if self.type == "histogram":
            return frozenset(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        return frozenset({self.name})

    def series_labels(self, series_name: str) -> frozenset[str]:
        """Labels a stored series of this metric may carry (target labels included)."""
        extra = {"le"} if series_name.endswith("_bucket") else set()
        return frozenset({*self.labels, *TARGET_LABELS, *extra})


# The contract with the gateway's metrics module. Keep in step with the code.
METRICS_CONTRACT: Final[tuple[MetricSpec, ...]] = (
    MetricSpec("gateway_http_requests_total", "counter", ("route", "method", "code"), "inbound requests"),
    MetricSpec("gateway_http_request_duration_seconds", "histogram", ("route",), "inbound request until last byte"),
    MetricSpec("gateway_upstream_requests_total", "counter", ("provider", "route"), "upstream attempts incl. retries"),
    MetricSpec("gateway_upstream_errors_total", "counter", ("provider", "route", "kind"), "failed upstream attempts"),
    MetricSpec("gateway_upstream_request_duration_seconds", "histogram", ("provider", "route"), "one upstream attempt"),
    MetricSpec("gateway_upstream_first_token_seconds", "histogram", ("provider", "route"), "time to first token"),
    MetricSpec("gateway_upstream_json_parse_failures_total", "counter", ("provider", "route"), "NDJSON lines not JSON"),
    MetricSpec("gateway_upstream_retries_total", "counter", ("provider", "route"), "retries"),
    MetricSpec("gateway_admission_rejections_total", "counter", ("provider", "reason"), "requests refused early"),
    MetricSpec("gateway_breaker_state", "gauge", ("provider", "route", "state"), "1 for the current breaker state"),
    MetricSpec("gateway_breaker_transitions_total", "counter", ("provider", "route", "to_state"), "state changes"),
    MetricSpec("gateway_provider_working", "gauge", ("provider", "route"), "working flag 1/0"),
    MetricSpec("gateway_health_probes_total", "counter", ("provider", "route", "result"), "health probes"),
    MetricSpec("gateway_health_probe_duration_seconds", "histogram", ("provider", "route"), "health probe duration"),
    MetricSpec("gateway_health_probe_last_success_timestamp_seconds", "gauge", ("provider", "route"), "last good probe"),
    MetricSpec("gateway_inflight_requests", "gauge", ("provider", "route"), "upstream calls in progress"),
    MetricSpec("gateway_route_selected_total", "counter", ("route",), "attempts sent to each route"),
    MetricSpec("gateway_failovers_total", "counter", ("from_route",), "attempts moved to another route"),
    MetricSpec("gateway_build_info", "gauge", ("version",), "always 1"),
    MetricSpec("gateway_shared_state_up", "gauge", (), "1 while sharing state through Redis (fleet only)"),
)
METRICS_BY_NAME: Final[Mapping[str, MetricSpec]] = {spec.name: spec for spec in METRICS_CONTRACT}
SERIES_TO_METRIC: Final[Mapping[str, MetricSpec]] = {
    series: spec for spec in METRICS_CONTRACT for series in spec.series_names()
}
# Closed label value sets from the contract.
LABEL_VALUES: Final[Mapping[str, frozenset[str]]] = {
    "provider": frozenset({PROVIDER}),
    "kind": frozenset(UPSTREAM_ERROR_KINDS),
    "reason": frozenset({"breaker_open", "half_open_busy", "not_working", "overloaded"}),
    "state": frozenset({"closed", "open", "half_open"}),
    "to_state": frozenset({"closed", "open", "half_open"}),
    "result": frozenset({"success", "failure"}),
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS: Final = frozenset({"job", "instance"})
# Standard client_python collectors; allowed by prefix.
STANDARD_METRIC_PREFIXES: Final = ("process_", "python_")
# Series Prometheus writes itself for every target.
SYNTHETIC_SERIES: Final = frozenset({"up"})


def contract_allows(series_name: str, recorded: Iterable[str] = ()) -> bool:
    """True if a PromQL series name is exported by the gateway, by Prometheus, or recorded."""
    return (
        series_name in SERIES_TO_METRIC
        or series_name in SYNTHETIC_SERIES
        or series_name.startswith(STANDARD_METRIC_PREFIXES)
        or series_name in set(recorded)
    )


# --------------------------------------------------------------------------- tools


def require_tool(name: str) -> str:
    """Path of an external tool; fails the test (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed or not on PATH; CI must provide it", pytrace=False)
    return path


def run_tool(
    name: str, *args: str | Path, cwd: Path = REPO_ROOT, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run an external tool; with ``check``, a non-zero exit fails the test with its output."""
    argv = [require_tool(name), *(str(arg) for arg in args)]
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )
    return result


def live_child_pids() -> set[int]:
    """Processes whose parent is this one and that have not exited (zombies excluded); Linux /proc."""
    me = str(os.getpid())
    pids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        state, ppid = fields[0], fields[1]
        if ppid == me and state != "Z":
            pids.add(int(stat.parent.name))
    return pids


# --------------------------------------------------------------------------- files


def load_yaml(path: Path) -> Any:
    """Parse a YAML file."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise TypeError(f"{path}: top level is {type(data).__name__}, expected a mapping")
    return cast("dict[str, Any]", data)


def rule_files() -> list[Path]:
    """The rule files Prometheus loads (monitoring/rules/*.yml)."""
    return sorted(RULES_DIR.glob("*.yml"))


def rule_test_files() -> list[Path]:
    """The promtool unit test files (monitoring/tests/*.yml)."""
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


@dataclass(frozen=True)
class Rule:
    """One alerting or recording rule as written in a rule file."""

    file: Path
    group: str
    kind: Literal["alert", "record"]
    name: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    for_: str | None = None


def iter_rules(files: Iterable[Path] | None = None) -> Iterator[Rule]:
    """Every rule of every rule file, in file order."""
    for path in rule_files() if files is None else files:
        for group in load_yaml_mapping(path).get("groups", []):
            for raw in group["rules"]:
                kind: Literal["alert", "record"] = "alert" if "alert" in raw else "record"
                yield Rule(
                    file=path,
                    group=str(group["name"]),
                    kind=kind,
                    name=str(raw[kind]),
                    expr=str(raw["expr"]),
                    labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
                    annotations={str(k): str(v) for k, v in (raw.get("annotations") or {}).items()},
                    for_=None if raw.get("for") is None else str(raw["for"]),
                )


def alert_rules() -> list[Rule]:
    """All alerting rules (an alertname may have several rules, e.g. one per severity)."""
    return [rule for rule in iter_rules() if rule.kind == "alert"]


def recording_rules() -> list[Rule]:
    """All recording rules."""
    return [rule for rule in iter_rules() if rule.kind == "record"]


def alert_names() -> set[str]:
    """Distinct alert names defined in the rule files."""
    return {rule.name for rule in alert_rules()}


@dataclass(frozen=True)
class AlertCase:
    """One ``alert_rule_test`` entry of a promtool test file."""

    file: Path
    test_index: int
    eval_time: str
    alertname: str
    exp_labels: tuple[Mapping[str, str], ...]

    @property
    def fires(self) -> bool:
        """True if the case expects at least one firing alert."""
        return bool(self.exp_labels)


def alert_cases() -> list[AlertCase]:
    """Every alert_rule_test case of every promtool test file."""
    cases: list[AlertCase] = []
    for path in rule_test_files():
        for index, test in enumerate(load_yaml_mapping(path).get("tests", [])):
            for case in test.get("alert_rule_test") or []:
                cases.append(
                    AlertCase(
                        file=path,
                        test_index=index,
                        eval_time=str(case["eval_time"]),
                        alertname=str(case["alertname"]),
                        exp_labels=tuple(
                            {str(k): str(v) for k, v in (alert.get("exp_labels") or {}).items()}
                            for alert in case.get("exp_alerts") or []
                        ),
                    )
                )
    return cases


def promql_expr_test_exprs() -> list[str]:
    """Every expression checked by a promql_expr_test."""
    return [
        str(case["expr"])
        for path in rule_test_files()
        for test in load_yaml_mapping(path).get("tests", [])
        for case in test.get("promql_expr_test") or []
    ]


# --------------------------------------------------------------------------- dashboard


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict[str, Any]:
    """Parse the Grafana dashboard JSON."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError(f"{path}: top level is not an object")
    return cast("dict[str, Any]", data)


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def iter_datasource_refs(node: Any) -> Iterator[Any]:
    """Every value stored under a ``datasource`` key anywhere in the JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from iter_datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_datasource_refs(item)


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def dashboard_variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Default substitution of each templating variable ("All" -> its allValue)."""
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("includeAll"):
            values[variable["name"]] = variable.get("allValue") or ".*"
        else:
            current = variable.get("current", {}).get("value")
            values[variable["name"]] = current if isinstance(current, str) else ""
    return values


def variables_in(expr: str) -> set[str]:
    """Names of the Grafana variables an expression uses."""
    return {next(g for g in match.groups() if g) for match in _VARIABLE.finditer(expr)}


def substitute_variables(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]``; unknown names raise."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise ValueError(f"no value for Grafana variable {name!r} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


@dataclass(frozen=True)
class PanelQuery:
    """One target of one dashboard panel."""

    panel_id: int
    panel_title: str
    ref_id: str
    expr: str
    legend: str

    @property
    def name(self) -> str:
        """A stable identifier, e.g. ``panel-7-A``."""
        return f"panel-{self.panel_id}-{self.ref_id}"


def dashboard_queries(
    dashboard: Mapping[str, Any] | None = None,
    *,
    rate_interval: str = "1m",
    variables: Mapping[str, str] | None = None,
    raw: bool = False,
) -> list[PanelQuery]:
    """Every panel target's PromQL, with Grafana variables substituted unless ``raw``.

    ``rate_interval`` stands in for ``$__rate_interval`` (and ``$__interval``);
    Grafana uses max(4 x scrape interval, step + scrape interval), so a live test
    scraping every second can pass e.g. ``"4s"``. ``variables`` overrides the
    dashboard variables (by default "All", i.e. ``.*``).
    """
    board = load_dashboard() if dashboard is None else dashboard
    values = {
        **dashboard_variables(board),
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        **(variables or {}),
    }
    queries: list[PanelQuery] = []
    for panel in iter_panels(board):
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            queries.append(
                PanelQuery(
                    panel_id=int(panel["id"]),
                    panel_title=str(panel.get("title", "")),
                    ref_id=str(target.get("refId", "")),
                    expr=expr if raw else substitute_variables(expr, values),
                    legend=str(target.get("legendFormat", "")),
                )
            )
    return queries


def expressions_as_rule_file(exprs: Mapping[str, str]) -> str:
    """A rule file recording each expression, so ``promtool check rules`` parses them."""
    rules = [{"record": "check:" + re.sub(r"\W", "_", name), "expr": expr} for name, expr in sorted(exprs.items())]
    return yaml.safe_dump({"groups": [{"name": "expression-syntax-check", "rules": rules}]}, sort_keys=False)


# --------------------------------------------------------------------------- PromQL scanning

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*,?')
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS: Final = frozenset(
    {
        "and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring",
        "group_left", "group_right", "inf", "nan",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a series selector."""

    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    """A series selector: metric name (may be empty) and its label matchers."""

    metric: str
    matchers: tuple[Matcher, ...]


def promql_selectors(expr: str) -> list[Selector]:
    """Selectors with braces, e.g. ``up{job="x"}`` (name-only selectors are not listed)."""
    selectors: list[Selector] = []
    for match in _SELECTOR.finditer(expr):
        name, body = match.group(1) or "", match.group(2)
        matchers = tuple(Matcher(m.group(1), m.group(2), json.loads(m.group(3))) for m in _MATCHER.finditer(body))
        selectors.append(Selector(name, matchers))
    return selectors


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (functions, keywords and label names removed)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def label_problems(expr: str) -> list[str]:
    """Matchers that name a label or a value the metrics contract does not have."""
    problems: list[str] = []
    for selector in promql_selectors(expr):
        spec = SERIES_TO_METRIC.get(selector.metric)
        for matcher in selector.matchers:
            if spec is not None and matcher.label not in spec.series_labels(selector.metric):
                problems.append(f"{selector.metric} has no label {matcher.label!r}")
            allowed = LABEL_VALUES.get(matcher.label)
            if allowed is None or matcher.op not in ("=", "=~") or "$" in matcher.value:
                continue
            values = matcher.value.split("|") if matcher.op == "=~" else [matcher.value]
            problems += [f"{matcher.label}={v!r} is not a contract value" for v in values if v not in allowed]
    return problems


# --------------------------------------------------------------------------- Alertmanager


def amtool_receiver(labels: Mapping[str, str], config: Path = ALERTMANAGER_CONFIG) -> str:
    """The receiver(s) amtool routes an alert with ``labels`` to, comma-separated."""
    args = [f"{key}={value}" for key, value in labels.items()]
    result = run_tool("amtool", "config", "routes", "test", f"--config.file={config}", *args)
    return result.stdout.strip()


# --------------------------------------------------------------------------- runbook


def github_anchor(heading: str) -> str:
    """The anchor GitHub generates for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors(path: Path = RUNBOOK) -> set[str]:
    """Anchors of every heading in the runbook."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


# --------------------------------------------------------------------------- compose


@dataclass(frozen=True)
class BindMount:
    """A host path a compose service mounts."""

    service: str
    source: Path
    target: str
    read_only: bool


def load_compose() -> dict[str, Any]:
    """Parse docker-compose.yml."""
    return load_yaml_mapping(COMPOSE_FILE)


def compose_bind_mounts(compose: Mapping[str, Any] | None = None) -> list[BindMount]:
    """Every bind mount (short or long syntax) of every service; named volumes are skipped."""
    spec = load_compose() if compose is None else compose
    mounts: list[BindMount] = []
    for service, body in spec.get("services", {}).items():
        for volume in body.get("volumes", []):
            if isinstance(volume, str):
                parts = volume.split(":")
                source, target = parts[0], parts[1]
                read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            else:
                if volume.get("type") != "bind":
                    continue
                source, target = str(volume["source"]), str(volume["target"])
                read_only = bool(volume.get("read_only", False))
            if not source.startswith((".", "/", "~")):
                continue
            mounts.append(BindMount(service, (REPO_ROOT / source).resolve(), target, read_only))
    return mounts


def mount_target_of(source: Path, mounts: Sequence[BindMount]) -> str:
    """Where a host path is mounted in its container."""
    for mount in mounts:
        if mount.source == source.resolve():
            return mount.target
    raise LookupError(f"{source} is not bind-mounted by docker-compose.yml")
