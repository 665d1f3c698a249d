"""The Grafana dashboard as data: panels, datasource references, variables, and every panel's PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import yaml

from tests.tool_support import REPO_ROOT

GRAFANA_DIR: Final = REPO_ROOT / "grafana"
DATASOURCES_DIR: Final = GRAFANA_DIR / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR: Final = GRAFANA_DIR / "provisioning" / "dashboards"
DASHBOARD_PATH: Final = GRAFANA_DIR / "dashboards" / "flowgpt-gateway.json"
DASHBOARD_UID: Final = "flowgpt-gateway"
DATASOURCE_UID: Final = "prometheus"


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
