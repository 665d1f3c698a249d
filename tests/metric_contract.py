"""The metric contract rules, dashboards and live tests are checked against, read from the gateway.

The families are those gateway/metrics.py registers (the per-route ones defined in
gateway/route_metrics.py).

Names, types and label names come from the families a fresh ``Metrics`` registers
(every label set is pre-created, so each family shows its labels at start-up); the
closed label value sets come from the constants the gateway itself uses. A metric
renamed in the code therefore fails every rule or panel that still reads the old name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

from gateway.fields import DROP_LABELS
from gateway.flowgpt.protocol import MODELS
from gateway.metrics import ADMISSION_REASONS, PROVIDER, STREAM_OUTCOMES, TOKEN_DIRECTIONS, Metrics
from gateway.outcome import UPSTREAM_ERROR_LABELS
from gateway.route_metrics import BREAKER_STATES, PROBE_RESULTS, TRANSITION_SOURCES

MetricType = Literal["counter", "gauge", "histogram"]
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS: Final = frozenset({"job", "instance"})
# Standard client_python collectors; allowed by prefix.
STANDARD_METRIC_PREFIXES: Final = ("process_", "python_")
# Series Prometheus writes itself for every target.
SYNTHETIC_SERIES: Final = frozenset({"up"})


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


def _gateway_metrics() -> tuple[MetricSpec, ...]:
    metrics = Metrics(shared_state=True)  # the optional fleet families belong to the contract too
    # The inbound HTTP series are made per route template; one route shows their labels.
    metrics.precreate_routes([("/contract", "GET")])
    specs: list[MetricSpec] = []
    for family in metrics.registry.collect():
        if not family.name.startswith("gateway_"):
            continue
        labels = tuple(dict.fromkeys(label for sample in family.samples for label in sample.labels if label != "le"))
        if not family.samples:
            raise AssertionError(f"{family.name} has no series at start-up, so its labels cannot be read")
        name = family.name + "_total" if family.type == "counter" else family.name
        specs.append(MetricSpec(name, cast("MetricType", family.type), labels, family.documentation))
    return tuple(specs)


METRICS_CONTRACT: Final[tuple[MetricSpec, ...]] = _gateway_metrics()
METRICS_BY_NAME: Final[Mapping[str, MetricSpec]] = {spec.name: spec for spec in METRICS_CONTRACT}
SERIES_TO_METRIC: Final[Mapping[str, MetricSpec]] = {
    series: spec for spec in METRICS_CONTRACT for series in spec.series_names()
}
# Closed label value sets, as the gateway defines them.
LABEL_VALUES: Final[Mapping[str, frozenset[str]]] = {
    "provider": frozenset({PROVIDER}),
    "kind": frozenset(UPSTREAM_ERROR_LABELS),
    "reason": frozenset(ADMISSION_REASONS),
    "state": frozenset(BREAKER_STATES),
    "to_state": frozenset(BREAKER_STATES),
    "source": frozenset(TRANSITION_SOURCES),
    "result": frozenset(PROBE_RESULTS),
    "param": frozenset(DROP_LABELS),
    "direction": frozenset(TOKEN_DIRECTIONS),
    "model": frozenset(MODELS),
    "outcome": frozenset(STREAM_OUTCOMES),
}


def contract_allows(series_name: str, recorded: Iterable[str] = ()) -> bool:
    """True if a PromQL series name is exported by the gateway, by Prometheus, or recorded."""
    return (
        series_name in SERIES_TO_METRIC
        or series_name in SYNTHETIC_SERIES
        or series_name.startswith(STANDARD_METRIC_PREFIXES)
        or series_name in set(recorded)
    )
