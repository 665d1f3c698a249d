"""A small PromQL scanner (no parser dependency): the metric names and label matchers an expression uses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

from tests.metric_contract import LABEL_VALUES, SERIES_TO_METRIC

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
