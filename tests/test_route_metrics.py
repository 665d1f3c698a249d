"""gateway/route_metrics.py: one route's series follow its breaker, working flag and probes from events."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.events import BreakerChanged, EventBus, ProbeFinished, ProbeResult, WorkingChanged
from gateway.route_metrics import BREAKER_STATES, RouteMetrics, UpstreamFamilies


def _route(registry: CollectorRegistry, name: str = "a") -> tuple[RouteMetrics, EventBus]:
    metrics, events = RouteMetrics(UpstreamFamilies(registry), "flowgpt", name), EventBus()
    metrics.subscribe(events)
    return metrics, events


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"provider": "flowgpt", "route": "a", **labels})


def test_a_new_route_reads_closed_and_working_with_every_state_written() -> None:
    registry = CollectorRegistry()
    _route(registry)
    states = {state: _value(registry, "gateway_breaker_state", state=state) for state in BREAKER_STATES}
    assert states == {"closed": 1.0, "open": 0.0, "half_open": 0.0}
    assert _value(registry, "gateway_provider_working") == 1.0


def test_breaker_changes_move_the_one_hot_gauge_and_count_transitions() -> None:
    registry = CollectorRegistry()
    _, events = _route(registry)
    events.publish(BreakerChanged("a", "closed", "open", "auto", by_traffic=True))
    events.publish(BreakerChanged("a", "open", "half_open", "auto", by_traffic=False))
    assert _value(registry, "gateway_breaker_state", state="half_open") == 1.0
    assert _value(registry, "gateway_breaker_state", state="open") == 0.0
    assert _value(registry, "gateway_breaker_transitions_total", to_state="open", source="local") == 1.0
    assert _value(registry, "gateway_breaker_transitions_total", to_state="half_open", source="local") == 1.0
    assert _value(registry, "gateway_breaker_transitions_total", to_state="closed", source="local") == 0.0


def test_the_working_gauge_follows_the_flag() -> None:
    registry = CollectorRegistry()
    _, events = _route(registry)
    events.publish(WorkingChanged("a", working=False, mode="auto"))
    assert _value(registry, "gateway_provider_working") == 0.0
    events.publish(WorkingChanged("a", working=True, mode="auto"))
    assert _value(registry, "gateway_provider_working") == 1.0


def test_a_relayed_probe_moves_the_last_success_but_is_counted_only_where_it_ran() -> None:
    registry = CollectorRegistry()
    _, events = _route(registry)
    events.publish(ProbeFinished("a", ProbeResult(ok=True, at=1_700_000_000.0, latency=0.2), started=5.0))
    events.publish(ProbeFinished("a", ProbeResult(ok=False, at=1_700_000_030.0, latency=0.4, error="503"), started=9.0))
    relayed = ProbeResult(ok=True, at=1_700_000_060.0, latency=0.1)
    events.publish(ProbeFinished("a", relayed, started=12.0, remote=True))
    assert _value(registry, "gateway_health_probes_total", result="success") == 1.0
    assert _value(registry, "gateway_health_probes_total", result="failure") == 1.0
    assert _value(registry, "gateway_health_probe_duration_seconds_count") == 2.0
    assert _value(registry, "gateway_health_probe_last_success_timestamp_seconds") == 1_700_000_060.0


def test_parse_failures_are_counted_per_route() -> None:
    registry = CollectorRegistry()
    families = UpstreamFamilies(registry)
    first, second = RouteMetrics(families, "flowgpt", "a"), RouteMetrics(families, "flowgpt", "b")
    first.json_parse_failure()
    first.json_parse_failure()
    second.json_parse_failure()
    assert _value(registry, "gateway_upstream_json_parse_failures_total") == 2.0
    labels = {"provider": "flowgpt", "route": "b"}
    assert registry.get_sample_value("gateway_upstream_json_parse_failures_total", labels) == 1.0
