"""The Prometheus contract: every metric the gateway exports, owned by one object.

Components never import prometheus_client; they call the small methods here
(directly or through observer/listener protocols). Metric names are a contract
with the alert rules and dashboards: extend, never rename.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.errors import UPSTREAM_ERROR_KINDS
from gateway.events import BreakerChanged, EventBus, ProbeFinished, WorkingChanged

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


class Metrics:
    """Owns the registry and every metric; pre-creates label sets so series exist at zero."""

    def __init__(self, *, provider: str = PROVIDER, registry: CollectorRegistry | None = None) -> None:
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
        upstream_requests = Counter(
            "gateway_upstream_requests_total", "Upstream attempts, retries included.", ["provider"], registry=reg
        )
        upstream_errors = Counter(
            "gateway_upstream_errors_total", "Failed upstream attempts by kind.", ["provider", "kind"], registry=reg
        )
        upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "One upstream attempt, request sent to stream end.",
            ["provider"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        first_token = Histogram(
            "gateway_upstream_first_token_seconds",
            "Request sent to first text event (time to first token).",
            ["provider"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=reg,
        )
        parse_failures = Counter(
            "gateway_upstream_json_parse_failures_total",
            "Upstream NDJSON lines that could not be parsed.",
            ["provider"],
            registry=reg,
        )
        retries = Counter("gateway_upstream_retries_total", "Upstream retries made.", ["provider"], registry=reg)
        rejections = Counter(
            "gateway_admission_rejections_total",
            "Requests refused without contacting the upstream.",
            ["provider", "reason"],
            registry=reg,
        )
        breaker_state = Gauge(
            "gateway_breaker_state",
            "1 for the breaker's current state, 0 for the others.",
            ["provider", "state"],
            registry=reg,
        )
        transitions = Counter(
            "gateway_breaker_transitions_total", "Breaker state changes.", ["provider", "to_state"], registry=reg
        )
        working = Gauge("gateway_provider_working", "The provider's working flag (1 or 0).", ["provider"], registry=reg)
        probes = Counter(
            "gateway_health_probes_total", "Health probes by result.", ["provider", "result"], registry=reg
        )
        probe_duration = Histogram(
            "gateway_health_probe_duration_seconds",
            "One health probe.",
            ["provider"],
            buckets=PROBE_BUCKETS,
            registry=reg,
        )
        probe_last_success = Gauge(
            "gateway_health_probe_last_success_timestamp_seconds",
            "Unix time of the last successful probe.",
            ["provider"],
            registry=reg,
        )
        inflight = Gauge("gateway_inflight_requests", "Upstream calls in progress.", ["provider"], registry=reg)
        build_info = Gauge("gateway_build_info", "Build information; always 1.", ["version"], registry=reg)
        build_info.labels(version=__version__).set(1)

        # Bound children: the hot path does no label lookups.
        self.upstream_requests = upstream_requests.labels(provider)
        self.upstream_errors = {kind: upstream_errors.labels(provider, kind) for kind in UPSTREAM_ERROR_KINDS}
        self.upstream_duration = upstream_duration.labels(provider)
        self.first_token = first_token.labels(provider)
        self.parse_failures = parse_failures.labels(provider)
        self.retries = retries.labels(provider)
        self.rejections = {reason: rejections.labels(provider, reason) for reason in ADMISSION_REASONS}
        self.breaker_state = {state: breaker_state.labels(provider, state) for state in BREAKER_STATES}
        self.transitions = {state: transitions.labels(provider, state) for state in BREAKER_STATES}
        self.working = working.labels(provider)
        self.probes = {result: probes.labels(provider, result) for result in PROBE_RESULTS}
        self.probe_duration = probe_duration.labels(provider)
        self.probe_last_success = probe_last_success.labels(provider)
        self.inflight = inflight.labels(provider)
        self._http_children: dict[tuple[str, str, int], Counter] = {}
        self._methods: frozenset[str] = frozenset()
        self._http_duration_children: dict[str, Histogram] = {}

        self.breaker_state["closed"].set(1)
        self.working.set(1)  # admitted until the first probe says otherwise

    # ClientObserver
    def json_parse_failure(self) -> None:
        """One upstream line could not be parsed."""
        self.parse_failures.inc()

    def subscribe(self, events: EventBus) -> None:
        """Mirror the breaker, the working flag and the probes from their events."""
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
        """Probe counters, duration and the last-success timestamp."""
        result = event.result
        self.probes["success" if result.ok else "failure"].inc()
        self.probe_duration.observe(result.latency)
        if result.ok:
            self.probe_last_success.set(result.at)

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
        """Current counter values for /status, read through the registry's public API."""
        labels = {"provider": self.provider}

        def value(name: str, **extra: str) -> float:
            return self.registry.get_sample_value(name, {**labels, **extra}) or 0.0

        return {
            "upstream_requests": value("gateway_upstream_requests_total"),
            "upstream_errors": {k: value("gateway_upstream_errors_total", kind=k) for k in UPSTREAM_ERROR_KINDS},
            "json_parse_failures": value("gateway_upstream_json_parse_failures_total"),
            "retries": value("gateway_upstream_retries_total"),
            "admission_rejections": {
                r: value("gateway_admission_rejections_total", reason=r) for r in ADMISSION_REASONS
            },
            "inflight": value("gateway_inflight_requests"),
            "probes": {r: value("gateway_health_probes_total", result=r) for r in PROBE_RESULTS},
        }
