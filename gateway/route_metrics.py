"""The upstream series of each route: the families every route shares, and one route's bound children.

Part of the Prometheus contract owned by :class:`gateway.metrics.Metrics`; names here are a
contract with the alert rules and dashboards too: extend, never rename.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.events import BreakerChanged, EventBus, ProbeFinished, WorkingChanged
from gateway.loop_metrics import metric_classes
from gateway.outcome import UPSTREAM_ERROR_LABELS

BREAKER_STATES: Final = ("closed", "open", "half_open")
TRANSITION_SOURCES: Final = ("local", "fleet")  # a peer's trip adopted here is not a trip of this process
PROBE_RESULTS: Final = ("success", "failure")

# An LLM call spans milliseconds (refusals, first token) to minutes (long streams).
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
PROBE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)


class RouteMetrics:
    """The upstream series of one route, bound to their labels so the hot path does no lookups."""

    def __init__(self, families: UpstreamFamilies, provider: str, route: str) -> None:
        self.route = route
        labels = (provider, route)
        self.upstream_requests = families.upstream_requests.labels(*labels)
        self.upstream_errors = {kind: families.upstream_errors.labels(*labels, kind) for kind in UPSTREAM_ERROR_LABELS}
        self.upstream_duration = families.upstream_duration.labels(*labels)
        self.first_token = families.first_token.labels(*labels)
        self.parse_failures = families.parse_failures.labels(*labels)
        self.retries = families.retries.labels(*labels)
        self.breaker_state = {state: families.breaker_state.labels(*labels, state) for state in BREAKER_STATES}
        self.transitions = {
            (state, source): families.transitions.labels(*labels, state, source)
            for state in BREAKER_STATES
            for source in TRANSITION_SOURCES
        }
        self.working = families.working.labels(*labels)
        self.probes = {result: families.probes.labels(*labels, result) for result in PROBE_RESULTS}
        self.probe_duration = families.probe_duration.labels(*labels)
        self.probe_last_success = families.probe_last_success.labels(*labels)
        self.inflight = families.inflight.labels(*labels)
        self.selected = families.selected.labels(route)
        self.failovers = families.failovers.labels(route)
        self.client_errors = families.client_errors.labels(route)
        for state, gauge in self.breaker_state.items():  # every state written: multiprocess files need a value
            gauge.set(1 if state == "closed" else 0)
        self.working.set(1)  # admitted until the first probe says otherwise

    # ClientObserver
    def json_parse_failure(self) -> None:
        """One upstream line of this route could not be parsed."""
        self.parse_failures.inc()

    def subscribe(self, events: EventBus) -> None:
        """Mirror this route's breaker, working flag and probes from the route's events."""
        events.subscribe(BreakerChanged, self.breaker_changed)
        events.subscribe(WorkingChanged, self.working_changed)
        events.subscribe(ProbeFinished, self.probe_finished)

    def breaker_changed(self, event: BreakerChanged) -> None:
        """The state gauge and the transition counter."""
        for state, gauge in self.breaker_state.items():
            gauge.set(1 if state == event.new else 0)
        if event.old != event.new:
            self.transitions[(event.new, "fleet" if event.from_fleet else "local")].inc()

    def working_changed(self, event: WorkingChanged) -> None:
        """The working-flag gauge."""
        self.working.set(1 if event.working else 0)

    def probe_finished(self, event: ProbeFinished) -> None:
        """Probe counters and duration (probes this process sent), and the last-success timestamp."""
        result = event.result
        if not event.remote:  # a relayed result was counted by the process that probed
            self.probes["success" if result.ok else "failure"].inc()
            self.probe_duration.observe(result.latency)
        if result.ok:
            self.probe_last_success.set(result.at)


class UpstreamFamilies:
    """The labelled metric families every route's series belong to."""

    def __init__(self, reg: CollectorRegistry) -> None:
        per_route = ["provider", "route"]
        # Written per request: lock-free in a single process (see gateway.loop_metrics); the rest stay standard.
        loop = metric_classes()
        self.upstream_requests = loop.counter(
            "gateway_upstream_requests_total", "Upstream attempts, retries included.", per_route, registry=reg
        )
        self.upstream_errors = loop.counter(
            "gateway_upstream_errors_total", "Failed upstream attempts by kind.", [*per_route, "kind"], registry=reg
        )
        self.upstream_duration = loop.histogram(
            "gateway_upstream_request_duration_seconds",
            "One upstream attempt, request sent to stream end.",
            per_route,
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.first_token = loop.histogram(
            "gateway_upstream_first_token_seconds",
            "Request sent to first text event (time to first token).",
            per_route,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=reg,
        )
        self.parse_failures = loop.counter(
            "gateway_upstream_json_parse_failures_total",
            "Upstream NDJSON lines that could not be parsed.",
            per_route,
            registry=reg,
        )
        self.retries = loop.counter(
            "gateway_upstream_retries_total", "Upstream retries made, by the route retried on.", per_route, registry=reg
        )
        self.breaker_state = Gauge(
            "gateway_breaker_state",
            "1 for the route's breaker's current state, 0 for the others.",
            [*per_route, "state"],
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.transitions = Counter(
            "gateway_breaker_transitions_total",
            "Breaker state changes; source fleet: a peer's trip or close adopted here (sum source local for a fleet).",
            [*per_route, "to_state", "source"],
            registry=reg,
        )
        self.working = Gauge(
            "gateway_provider_working",
            "The route's working flag (1 or 0).",
            per_route,
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.probes = Counter(
            "gateway_health_probes_total", "Health probes by result.", [*per_route, "result"], registry=reg
        )
        self.probe_duration = Histogram(
            "gateway_health_probe_duration_seconds", "One health probe.", per_route, buckets=PROBE_BUCKETS, registry=reg
        )
        self.probe_last_success = Gauge(
            "gateway_health_probe_last_success_timestamp_seconds",
            "Unix time of the last successful probe.",
            per_route,
            registry=reg,
            multiprocess_mode="max",
        )
        self.inflight = loop.gauge(
            "gateway_inflight_requests",
            "Upstream calls in progress.",
            per_route,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.selected = loop.counter(
            "gateway_route_selected_total", "Upstream attempts sent to each route.", ["route"], registry=reg
        )
        self.failovers = loop.counter(
            "gateway_failovers_total",
            "Attempts that failed on a route and moved to another one.",
            ["from_route"],
            registry=reg,
        )
        self.client_errors = loop.counter(
            "gateway_route_client_errors_total",
            "Chat requests that ended in an error for the client (5xx, or a stream's error event) "
            "whose last attempt failed on this route.",
            ["route"],
            registry=reg,
        )
