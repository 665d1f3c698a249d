"""The Prometheus contract: every metric the gateway exports, owned by one object.

The per-route upstream series (requests, errors, latency, breaker, working flag, probes) are
defined in :mod:`gateway.route_metrics`; this module adds the inbound HTTP series, admission
rejections, build info and shared state, and serves the registry.

Components never import prometheus_client; they call the small methods here
(directly, through the client's observer protocol, or by subscribing to events). Metric names are a contract
with the alert rules and dashboards: extend, never rename.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.fields import DROP_LABELS
from gateway.flowgpt.protocol import MODELS
from gateway.loop_metrics import LoopHistogram, metric_classes
from gateway.outcome import UPSTREAM_ERROR_LABELS
from gateway.route_config import DEFAULT_ROUTE
from gateway.route_metrics import PROBE_RESULTS, REQUEST_BUCKETS, RouteMetrics, UpstreamFamilies

PROVIDER: Final = "flowgpt"
EXEMPLAR_ID_CHARS: Final = 128 - len("request_id")
TRACE_ID_HEX: Final = 32  # an OpenTelemetry trace id: 128 bits
_TRACE_ID_CHARS: Final = len("trace_id") + TRACE_ID_HEX
# From 50 µs (the floor measured in bench/) to a second (a long queue for a slot).
OVERHEAD_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
TOKEN_DIRECTIONS: Final = ("prompt", "completion")
ADMISSION_REASONS: Final = ("breaker_open", "half_open_busy", "not_working", "overloaded")
# How a stream that began with 200 ended: ``error`` is the gateway's or the upstream's failure (it
# burns the client SLO); ``rejected`` the upstream refused this one request and ``client_gone`` the
# client left or stopped reading (both left out of the SLO).
StreamOutcome = Literal["completed", "error", "rejected", "client_gone"]
STREAM_OUTCOMES: Final[tuple[StreamOutcome, ...]] = get_args(StreamOutcome)
ANSWER_CLASSES: Final = ("2xx", "4xx", "5xx")
CHAT_ROUTE: Final = "/v1/chat/completions"
# The method label takes only methods the gateway routes; anything a client invents is "other".
OTHER_METHOD: Final = "other"


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
        # Written per request: lock-free in a single process (see gateway.loop_metrics); the rest stay standard.
        loop = metric_classes()

        self._http_requests = loop.counter(
            "gateway_http_requests_total", "Inbound HTTP requests.", ["route", "method", "code"], registry=reg
        )
        self._http_duration = loop.histogram(
            "gateway_http_request_duration_seconds",
            "Inbound request time until the last byte is sent (streams included).",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        overhead = loop.histogram(
            "gateway_overhead_seconds",
            "Time a chat request spent in the gateway itself (not waiting on the upstream, the client or a backoff).",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=reg,
        )
        self._overhead = {name: overhead.labels(name) for name in routes}
        rejections = loop.counter(
            "gateway_admission_rejections_total",
            "Requests refused without contacting the upstream.",
            ["provider", "reason"],
            registry=reg,
        )
        stream_outcomes = loop.counter(
            "gateway_stream_outcomes_total",
            "Chat streams (answered 200) by how they ended; error: an error event ended the stream.",
            ["outcome"],
            registry=reg,
        )
        self.stream_outcomes = {outcome: stream_outcomes.labels(outcome) for outcome in STREAM_OUTCOMES}
        build_info = Gauge(
            "gateway_build_info", "Build information; always 1.", ["version"], registry=reg, multiprocess_mode="livemax"
        )
        build_info.labels(version=__version__).set(1)
        families = UpstreamFamilies(reg)
        self.routes = {name: RouteMetrics(families, provider, name) for name in routes}
        self.rejections = {reason: rejections.labels(provider, reason) for reason in ADMISSION_REASONS}
        dropped = Counter(
            "gateway_dropped_params_total",
            "Refused request fields dropped under GATEWAY_DROP_PARAMS, by field.",
            ["param"],
            registry=reg,
        )
        # One series per refusable field of the table and one for all others: the label never takes client input.
        self.dropped_params = {param: dropped.labels(param) for param in DROP_LABELS}
        tokens = loop.counter(
            "gateway_tokens_total",
            "Tokens of answered requests (cl100k_base estimates), by route, model and direction.",
            ["route", "model", "direction"],
            registry=reg,
        )
        # model is a resolved FlowGpt model (never the client's string): routes x models x 2 series,
        # held as one (prompt, completion) pair per route and model: one lookup per answer.
        self._tokens = {
            (route, model): (tokens.labels(route, model, "prompt"), tokens.labels(route, model, "completion"))
            for route in routes
            for model in MODELS
        }
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
        self._http_duration_observers: dict[str, Callable[[float, dict[str, str] | None], None]] = {}

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

    def stream_ended(self, outcome: StreamOutcome) -> None:
        """One chat stream ended; ``outcome`` is one of :data:`STREAM_OUTCOMES`."""
        self.stream_outcomes[outcome].inc()

    def count_tokens(self, route: str, model: str, *, prompt: int, completion: int) -> None:
        """One answer's prompt and completion tokens."""
        prompt_tokens, completion_tokens = self._tokens[(route, model)]
        prompt_tokens.inc(prompt)
        completion_tokens.inc(completion)

    def observe_overhead(self, route: str, seconds: float) -> None:
        """The gateway's own time for one chat request that ``route`` answered."""
        child = self._overhead.get(route)
        if child is not None:
            child.observe(seconds)

    def observe_http(
        self, route: str, method: str, status: int, seconds: float, request_id: str | None, trace_id: str | None = None
    ) -> None:
        """One finished inbound request; an unrouted method is labelled ``other``."""
        if method not in self._methods:
            method = OTHER_METHOD
        key = (route, method, status)
        counter = self._http_children.get(key)
        if counter is None:
            counter = self._http_children[key] = self._http_requests.labels(route, method, str(status))
        counter.inc()
        observe = self._http_duration_observers.get(route)
        if observe is None:
            histogram = self._http_duration.labels(route)
            # The exemplars below are valid by construction: a lock-free child need not check each one.
            observe = histogram.observe_valid if isinstance(histogram, LoopHistogram) else histogram.observe
            self._http_duration_observers[route] = observe
        if request_id is None:
            observe(seconds, None)
        # OpenMetrics caps an exemplar's labels at 128 characters, "request_id" included; both names are
        # plain label names.
        elif trace_id is None:
            observe(seconds, {"request_id": request_id[:EXEMPLAR_ID_CHARS]})
        else:  # 32 hex characters: the request id gives up room for them
            exemplar = {"request_id": request_id[: EXEMPLAR_ID_CHARS - _TRACE_ID_CHARS], "trace_id": trace_id}
            if len(trace_id) <= TRACE_ID_HEX:
                observe(seconds, exemplar)
            else:  # not an OpenTelemetry id (Tracing.trace_id never gives one): checked, and refused, as ever
                self._http_duration.labels(route).observe(seconds, exemplar)

    def answers_by_class(self, route: str) -> dict[str, float]:
        """Inbound answers of one route template so far, by status class (``2xx``, ``4xx`` with 499, ``5xx``)."""
        totals = dict.fromkeys(ANSWER_CLASSES, 0.0)
        for (template, _, status), counter in list(self._http_children.items()):
            key = f"{status // 100}xx"
            if template == route and key in totals:
                totals[key] += sum(s.value for f in counter.collect() for s in f.samples if s.name.endswith("_total"))
        return totals

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
                    k: value("gateway_upstream_errors_total", route=route, kind=k) for k in UPSTREAM_ERROR_LABELS
                },
                "json_parse_failures": value("gateway_upstream_json_parse_failures_total", route=route),
                "retries": value("gateway_upstream_retries_total", route=route),
                "inflight": value("gateway_inflight_requests", route=route),
                "probes": {r: value("gateway_health_probes_total", route=route, result=r) for r in PROBE_RESULTS},
                "failovers": self.registry.get_sample_value("gateway_failovers_total", {"from_route": route}) or 0.0,
                "client_errors": self.registry.get_sample_value("gateway_route_client_errors_total", {"route": route})
                or 0.0,
            }

        return {
            "admission_rejections": {
                r: value("gateway_admission_rejections_total", reason=r) for r in ADMISSION_REASONS
            },
            "stream_outcomes": {
                outcome: self.registry.get_sample_value("gateway_stream_outcomes_total", {"outcome": outcome}) or 0.0
                for outcome in STREAM_OUTCOMES
            },
            "routes": {route: route_summary(route) for route in self.routes},
        }
