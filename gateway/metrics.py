"""The Prometheus contract: every metric the gateway exports, owned by one object.

Components never import prometheus_client; they call the small methods here
(directly, through the client's observer protocol, or by subscribing to events). Metric names are a contract
with the alert rules and dashboards: extend, never rename.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.errors import UPSTREAM_ERROR_KINDS
from gateway.events import BreakerChanged, EventBus, ProbeFinished, WorkingChanged
from gateway.route_config import DEFAULT_ROUTE

PROVIDER: Final = "flowgpt"
EXEMPLAR_ID_CHARS: Final = 128 - len("request_id")
ADMISSION_REASONS: Final = ("breaker_open", "half_open_busy", "not_working", "overloaded")
BREAKER_STATES: Final = ("closed", "open", "half_open")
PROBE_RESULTS: Final = ("success", "failure")
# The method label takes only methods the gateway routes; anything a client invents is "other".
OTHER_METHOD: Final = "other"

# An LLM call spans milliseconds (refusals, first token) to minutes (long streams).
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
PROBE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)


class RouteMetrics:
    """The upstream series of one route, bound to their labels so the hot path does no lookups."""

    def __init__(self, families: _UpstreamFamilies, provider: str, route: str) -> None:
        self.route = route
        labels = (provider, route)
        self.upstream_requests = families.upstream_requests.labels(*labels)
        self.upstream_errors = {kind: families.upstream_errors.labels(*labels, kind) for kind in UPSTREAM_ERROR_KINDS}
        self.upstream_duration = families.upstream_duration.labels(*labels)
        self.first_token = families.first_token.labels(*labels)
        self.parse_failures = families.parse_failures.labels(*labels)
        self.retries = families.retries.labels(*labels)
        self.breaker_state = {state: families.breaker_state.labels(*labels, state) for state in BREAKER_STATES}
        self.transitions = {state: families.transitions.labels(*labels, state) for state in BREAKER_STATES}
        self.working = families.working.labels(*labels)
        self.probes = {result: families.probes.labels(*labels, result) for result in PROBE_RESULTS}
        self.probe_duration = families.probe_duration.labels(*labels)
        self.probe_last_success = families.probe_last_success.labels(*labels)
        self.inflight = families.inflight.labels(*labels)
        self.selected = families.selected.labels(route)
        self.failovers = families.failovers.labels(route)
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
            self.transitions[event.new].inc()

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


class _UpstreamFamilies:
    """The labelled metric families every route's series belong to."""

    def __init__(self, reg: CollectorRegistry) -> None:
        per_route = ["provider", "route"]
        self.upstream_requests = Counter(
            "gateway_upstream_requests_total", "Upstream attempts, retries included.", per_route, registry=reg
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total", "Failed upstream attempts by kind.", [*per_route, "kind"], registry=reg
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "One upstream attempt, request sent to stream end.",
            per_route,
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.first_token = Histogram(
            "gateway_upstream_first_token_seconds",
            "Request sent to first text event (time to first token).",
            per_route,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=reg,
        )
        self.parse_failures = Counter(
            "gateway_upstream_json_parse_failures_total",
            "Upstream NDJSON lines that could not be parsed.",
            per_route,
            registry=reg,
        )
        self.retries = Counter(
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
            "gateway_breaker_transitions_total", "Breaker state changes.", [*per_route, "to_state"], registry=reg
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
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Upstream calls in progress.",
            per_route,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.selected = Counter(
            "gateway_route_selected_total", "Upstream attempts sent to each route.", ["route"], registry=reg
        )
        self.failovers = Counter(
            "gateway_failovers_total",
            "Attempts that failed on a route and moved to another one.",
            ["from_route"],
            registry=reg,
        )


class Metrics:
    """Owns the registry and every metric; pre-creates label sets so series exist at zero."""

    def __init__(
        self,
        *,
        routes: tuple[str, ...] = (DEFAULT_ROUTE,),
        provider: str = PROVIDER,
        registry: CollectorRegistry | None = None,
        shared_state: bool = False,
    ) -> None:
        self.provider = provider
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)

        self._http_requests = Counter(
            "gateway_http_requests_total", "Inbound HTTP requests.", ["route", "method", "code"], registry=reg
        )
        self._http_duration = Histogram(
            "gateway_http_request_duration_seconds",
            "Inbound request time until the last byte is sent (streams included).",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        rejections = Counter(
            "gateway_admission_rejections_total",
            "Requests refused without contacting the upstream.",
            ["provider", "reason"],
            registry=reg,
        )
        build_info = Gauge(
            "gateway_build_info", "Build information; always 1.", ["version"], registry=reg, multiprocess_mode="livemax"
        )
        build_info.labels(version=__version__).set(1)
        families = _UpstreamFamilies(reg)
        self.routes = {name: RouteMetrics(families, provider, name) for name in routes}
        self.rejections = {reason: rejections.labels(provider, reason) for reason in ADMISSION_REASONS}
        # Only with GATEWAY_REDIS_URL: without a fleet there is no shared state to lose.
        self._shared_state_up = (
            Gauge(
                "gateway_shared_state_up",
                "1 while this process shares upstream health through Redis, 0 while it decides alone.",
                registry=reg,
                multiprocess_mode="livemin",
            )
            if shared_state
            else None
        )
        self._http_children: dict[tuple[str, str, int], Counter] = {}
        self._methods: frozenset[str] = frozenset()
        self._http_duration_children: dict[str, Histogram] = {}

    def scrape_registry(self) -> CollectorRegistry:
        """What /metrics serves: this registry, or under ``serve --workers`` the sum of every worker's files.

        In multiprocess mode the process, platform and GC collectors are left out: they would
        describe only the worker that happened to answer the scrape.
        """
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    def shared_state_changed(self, up: bool) -> None:
        """The fleet link came up or went down."""
        if self._shared_state_up is not None:
            self._shared_state_up.set(1 if up else 0)

    def observe_http(self, route: str, method: str, status: int, seconds: float, request_id: str | None) -> None:
        """One finished inbound request; an unrouted method is labelled ``other``."""
        if method not in self._methods:
            method = OTHER_METHOD
        key = (route, method, status)
        counter = self._http_children.get(key)
        if counter is None:
            counter = self._http_children[key] = self._http_requests.labels(route, method, str(status))
        counter.inc()
        histogram = self._http_duration_children.get(route)
        if histogram is None:
            histogram = self._http_duration_children[route] = self._http_duration.labels(route)
        if request_id is None:
            histogram.observe(seconds)
        else:
            # OpenMetrics caps an exemplar's labels at 128 characters, "request_id" included.
            histogram.observe(seconds, exemplar={"request_id": request_id[:EXEMPLAR_ID_CHARS]})

    def precreate_routes(self, routes: list[tuple[str, str]]) -> None:
        """Create the success series of the known routes so rate() works from the first scrape.

        Their methods (plus HEAD, which aiohttp answers for every GET) become the method label's values.
        """
        self._methods = frozenset({method for _, method in routes} | {"HEAD"})
        for route, method in routes:
            self._http_requests.labels(route, method, "200")
            self._http_duration.labels(route)

    def summary(self) -> dict[str, object]:
        """Current counter values for /status, per route, read through the registry's public API."""

        def value(name: str, **labels: str) -> float:
            return self.registry.get_sample_value(name, {"provider": self.provider, **labels}) or 0.0

        def route_summary(route: str) -> dict[str, object]:
            return {
                "upstream_requests": value("gateway_upstream_requests_total", route=route),
                "upstream_errors": {
                    k: value("gateway_upstream_errors_total", route=route, kind=k) for k in UPSTREAM_ERROR_KINDS
                },
                "json_parse_failures": value("gateway_upstream_json_parse_failures_total", route=route),
                "retries": value("gateway_upstream_retries_total", route=route),
                "inflight": value("gateway_inflight_requests", route=route),
                "probes": {r: value("gateway_health_probes_total", route=route, result=r) for r in PROBE_RESULTS},
                "failovers": self.registry.get_sample_value("gateway_failovers_total", {"from_route": route}) or 0.0,
            }

        return {
            "admission_rejections": {
                r: value("gateway_admission_rejections_total", reason=r) for r in ADMISSION_REASONS
            },
            "routes": {route: route_summary(route) for route in self.routes},
        }
