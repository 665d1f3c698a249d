"""The promtool unit test cases and what the rules promise: receivers, runbook links and sections."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.handlers.runbook import anchor
from monitoring.configs import MONITORING_DIR, Rule, iter_rules, load_yaml_mapping
from tests.tool_support import REPO_ROOT

RULE_TESTS_DIR: Final = MONITORING_DIR / "tests"
RUNBOOK: Final = REPO_ROOT / "docs" / "runbook.md"
MONITORING_DOC: Final = REPO_ROOT / "docs" / "monitoring.md"
SLO_TARGET_RECORD: Final = "gateway:slo:target"
# Every runbook_url is this template plus an anchor: Prometheus fills in the one setting, the
# external label runbook_base_url of monitoring/prometheus.yml.
RUNBOOK_BASE_LABEL: Final = "runbook_base_url"
RUNBOOK_URL_BASE: Final = "{{ $externalLabels.runbook_base_url }}"
# Receiver each kind of alert must reach.
RECEIVER_FOR_SEVERITY: Final[Mapping[str, str]] = {"critical": "pager", "warning": "ticket"}
WATCHDOG_ALERT: Final = "Watchdog"
WATCHDOG_RECEIVER: Final = "watchdog"


def rule_test_files() -> list[Path]:
    """The promtool unit test files (monitoring/tests/*.yml)."""
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


def alert_rules() -> list[Rule]:
    """All alerting rules (an alertname may have several rules, e.g. one per severity)."""
    return [rule for rule in iter_rules() if rule.kind == "alert"]


def recording_rules() -> list[Rule]:
    """All recording rules."""
    return [rule for rule in iter_rules() if rule.kind == "record"]


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


def runbook_anchors(path: Path = RUNBOOK) -> set[str]:
    """Anchors of every heading in the runbook."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {anchor(heading) for heading in headings}
