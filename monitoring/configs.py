"""The shipped monitoring configs: the one loader of the rule files, and copies rewritten for a run on loopback.

Only addresses, intervals, Alertmanager grouping timings and the ``for:`` of
named alerts change; expressions, labels, routes and inhibitions stay as
shipped, so a drill or a live test exercises what production runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import yaml

MONITORING_DIR: Final = Path(__file__).resolve().parent
PROMETHEUS_CONFIG: Final = MONITORING_DIR / "prometheus.yml"
RULES_DIR: Final = MONITORING_DIR / "rules"
ALERTMANAGER_CONFIG: Final = MONITORING_DIR / "alertmanager.yml"

# The scrape job every rule selects on.
JOB: Final = "flowgpt-gateway"
# Every webhook URL in alertmanager.yml starts with this; loopback runs swap it out.
DEFAULT_WEBHOOK_BASE: Final = "http://webhook:5001"


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError(f"{path}: top level is {type(data).__name__}, expected a mapping")
    return cast("dict[str, Any]", data)


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    """The rule files Prometheus loads (``rules/*.yml``)."""
    return sorted(rules_dir.glob("*.yml"))


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
    """Every rule of every rule file (default: the shipped ones), in file order."""
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


def alert_names(rules_dir: Path = RULES_DIR) -> set[str]:
    """Distinct alert names defined in the rule files."""
    return {rule.name for rule in iter_rules(rule_files(rules_dir)) if rule.kind == "alert"}


def webhook_urls(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Webhook URLs per receiver name."""
    return {
        str(receiver["name"]): [str(hook["url"]) for hook in receiver.get("webhook_configs") or []]
        for receiver in config.get("receivers", [])
    }


def alertmanager_config_with_webhook(
    base_url: str,
    *,
    timings: Mapping[str, str] | None = None,
    resolve_timeout: str | None = None,
    source: Path = ALERTMANAGER_CONFIG,
) -> str:
    """alertmanager.yml text with every webhook URL moved from the default base to ``base_url``.

    ``http://webhook:5001/pager`` becomes ``{base_url}/pager`` and so on; write the
    result to a temporary file and start Alertmanager with it. ``timings`` (e.g.
    ``{"group_wait": "0s", "group_interval": "1s", "repeat_interval": "1m"}``)
    replaces those keys on the root route and on every child route that sets
    them, so a live run does not wait for production grouping delays.
    ``resolve_timeout`` replaces the global one.
    """
    text = source.read_text(encoding="utf-8")
    if DEFAULT_WEBHOOK_BASE not in text:
        raise ValueError(f"{source} has no webhook URL starting with {DEFAULT_WEBHOOK_BASE}")
    rewritten = text.replace(DEFAULT_WEBHOOK_BASE, base_url.rstrip("/"))
    parsed = yaml.safe_load(rewritten)
    stray = [url for urls in webhook_urls(parsed).values() for url in urls if not url.startswith(base_url)]
    if stray:
        raise ValueError(f"webhook URLs not under {base_url}: {stray}")
    if not timings and resolve_timeout is None:
        return rewritten
    routes = [parsed["route"]]
    while routes:
        route = routes.pop()
        for key, value in (timings or {}).items():
            if key in route or route is parsed["route"]:
                route[key] = value
        routes.extend(route.get("routes", []))
    if resolve_timeout is not None:
        parsed.setdefault("global", {})["resolve_timeout"] = resolve_timeout
    return yaml.safe_dump(parsed, sort_keys=False)


def prometheus_config_for(
    *,
    target: str,
    alertmanager: str | None = None,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    rules_dir: Path = RULES_DIR,
    source: Path = PROMETHEUS_CONFIG,
) -> str:
    """prometheus.yml adapted for a run on loopback.

    The gateway job scrapes ``target`` (``host:port``), rule files come from
    ``rules_dir`` by absolute path, intervals are shortened, and alerts go to
    ``alertmanager`` (``host:port``) or nowhere.
    """
    config = load_yaml_mapping(source)
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "evaluation_interval": evaluation_interval,
    }
    config["rule_files"] = [str(rules_dir.resolve() / "*.yml")]
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    if len(jobs) != 1:
        raise ValueError(f"{source} must have exactly one scrape job {JOB!r}")
    jobs[0]["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = jobs
    return yaml.safe_dump(config, sort_keys=False)


def copy_rules(dest: Path, *, for_overrides: Mapping[str, str] | None = None, source: Path = RULES_DIR) -> Path:
    """Copy the rule files into ``dest``, optionally changing the ``for:`` of named alerts.

    ``for_overrides={"GatewayUpstreamNotWorking": "2s"}`` lets a live run see an
    alert fire in seconds. Returns ``dest``, ready for ``prometheus_config_for(rules_dir=...)``.
    """
    overrides = dict(for_overrides or {})
    unknown = set(overrides) - alert_names(source)
    if unknown:
        raise ValueError(f"no such alerts: {sorted(unknown)}")
    dest.mkdir(parents=True, exist_ok=True)
    for path in rule_files(source):
        content = load_yaml_mapping(path)
        for group in content.get("groups", []):
            for rule in group["rules"]:
                if rule.get("alert") in overrides:
                    rule["for"] = overrides[rule["alert"]]
        (dest / path.name).write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return dest
