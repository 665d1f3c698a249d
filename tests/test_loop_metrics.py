"""gateway/loop_metrics.py: the lock-free families expose exactly what the standard ones do.

The gateway's families are built twice, once with prometheus_client's classes and once with the
lock-free ones, fed the same updates through the same methods at the same (frozen) time, and their
text and OpenMetrics expositions compared byte for byte. Multiprocess mode keeps the standard classes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

import gateway
import gateway.metrics
import gateway.route_metrics
from gateway.events import BreakerChanged, EventBus, ProbeFinished, ProbeResult, WorkingChanged
from gateway.flowgpt.protocol import MODELS
from gateway.loop_metrics import LOOP, STANDARD, LoopCounter, LoopGauge, LoopHistogram, MetricClasses, metric_classes
from gateway.metrics import CHAT_ROUTE, Metrics, StreamOutcome

NOW = 1_700_000_000.25
ROUTES = ("default", "backup")
LONG_ID = "r" * 128
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class _Gateway:
    """Only the gateway's own families of a registry (the process and GC collectors change between reads)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return [family for family in self._registry.collect() if family.name.startswith("gateway_")]


def _expositions(registry: CollectorRegistry) -> tuple[bytes, bytes]:
    only = CollectorRegistry(auto_describe=False)
    only.register(_Gateway(registry))
    return generate_latest(only), generate_openmetrics(only)  # type: ignore[no-untyped-call]


def _traffic(metrics: Metrics) -> None:
    """Every hot-path call with the values that reach the edges: bounds, +Inf, NaN, zero, negative, exemplars."""
    metrics.precreate_routes([(CHAT_ROUTE, "POST"), ("/healthz", "GET")])
    for seconds in (0.0, 0.005, 0.0051, 1, 2.5, 599.9, 600, 601, math.inf, -1.0, 0.3):
        metrics.observe_http(CHAT_ROUTE, "POST", 200, seconds, "req-1")
    metrics.observe_http(CHAT_ROUTE, "POST", 200, 0.7, LONG_ID, TRACE_ID)
    metrics.observe_http(CHAT_ROUTE, "POST", 200, 0.7, LONG_ID)  # replaces that bucket's exemplar
    metrics.observe_http(CHAT_ROUTE, "BREW", 502, 12.0, None)
    metrics.observe_http("unmatched", "GET", 404, 0.001, "x:y.z-1")
    metrics.observe_http("/healthz", "HEAD", 200, math.nan, "nan-id")
    for name in ROUTES:
        metrics.observe_overhead(name, 0.00007)
        metrics.observe_overhead(name, 0.3)
        metrics.count_tokens(name, MODELS[0], prompt=13, completion=11)
    metrics.count_tokens("default", MODELS[-1], prompt=0, completion=2_000_000)
    metrics.observe_overhead("unknown", 0.1)
    outcomes: tuple[StreamOutcome, ...] = ("completed", "completed", "error", "client_gone")
    for outcome in outcomes:
        metrics.stream_ended(outcome)
    metrics.rejections["overloaded"].inc()
    metrics.dropped_params[next(iter(metrics.dropped_params))].inc()
    metrics.shared_state_changed(False)
    route = metrics.routes["default"]
    for _ in range(3):
        route.selected.inc()
        route.upstream_requests.inc()
        route.inflight.inc()
        route.first_token.observe(0.0008)
    route.inflight.dec()
    route.inflight.dec(0.5)
    route.inflight.inc(2.25)
    route.upstream_duration.observe(0.0011)
    route.upstream_duration.observe(20)
    route.upstream_errors["timeout"].inc()
    route.retries.inc(2)
    route.failovers.inc()
    route.client_errors.inc()
    route.json_parse_failure()
    events = EventBus()
    route.subscribe(events)
    events.publish(BreakerChanged("default", "closed", "open", "auto", by_traffic=True))
    events.publish(WorkingChanged("default", working=False, mode="auto"))
    events.publish(ProbeFinished("default", ProbeResult(ok=True, at=NOW, latency=0.2), started=5.0))


def _use(monkeypatch: pytest.MonkeyPatch, classes: MetricClasses) -> None:
    """Build the gateway's families with ``classes``, whatever the process mode."""
    monkeypatch.setattr(gateway.metrics, "metric_classes", lambda: classes)
    monkeypatch.setattr(gateway.route_metrics, "metric_classes", lambda: classes)


def _built(monkeypatch: pytest.MonkeyPatch, classes: MetricClasses) -> Metrics:
    _use(monkeypatch, classes)
    metrics = Metrics(routes=ROUTES, shared_state=True)
    _traffic(metrics)
    return metrics


def test_the_gateways_families_expose_the_same_text_and_openmetrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same names, help, labels, series order, buckets, values, _created and exemplars, in both formats."""
    monkeypatch.setattr(time, "time", lambda: NOW)
    standard, loop = _built(monkeypatch, STANDARD), _built(monkeypatch, LOOP)
    assert type(loop.routes["default"].upstream_requests) is LoopCounter  # the comparison is not vacuous
    assert type(standard.routes["default"].upstream_requests) is Counter
    text, openmetrics = _expositions(standard.registry)
    assert _expositions(loop.registry) == (text, openmetrics)
    assert b'request_id="req-1"' in openmetrics
    assert f'trace_id="{TRACE_ID}"'.encode() not in openmetrics  # its bucket's exemplar was replaced
    assert f'request_id="{LONG_ID[:118]}"'.encode() in openmetrics
    assert b"gateway_upstream_requests_created" in openmetrics
    assert loop.summary() == standard.summary()
    assert loop.answers_by_class(CHAT_ROUTE) == standard.answers_by_class(CHAT_ROUTE)


def test_the_trace_exemplar_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)
    expositions = []
    for classes in (STANDARD, LOOP):
        _use(monkeypatch, classes)
        metrics = Metrics()
        metrics.observe_http(CHAT_ROUTE, "POST", 200, 0.2, LONG_ID, TRACE_ID)
        expositions.append(_expositions(metrics.registry))
    assert expositions[0] == expositions[1]
    assert f'request_id="{LONG_ID[:78]}",trace_id="{TRACE_ID}"'.encode() in expositions[1][1]


def test_a_trace_id_too_long_for_an_exemplar_is_refused_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    for classes in (STANDARD, LOOP):
        _use(monkeypatch, classes)
        metrics = Metrics()
        with pytest.raises(ValueError, match="Exemplar labels"):
            metrics.observe_http(CHAT_ROUTE, "POST", 200, 0.2, LONG_ID, TRACE_ID + "0")


def test_observe_valid_counts_as_the_standard_observe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unchecked path a caller with valid exemplars takes: the same buckets, sum and exemplars."""
    monkeypatch.setattr(time, "time", lambda: NOW)
    amounts = (-5.0, 0.0, 0.01, 0.010001, 1, 3, math.inf, math.nan, 2.5)

    def make(classes: MetricClasses, registry: CollectorRegistry) -> None:
        child = classes.histogram("v", "v", ["a"], buckets=(0.01, 1, 2.5), registry=registry).labels("x")
        for number, amount in enumerate(amounts):
            exemplar = {"request_id": f"id-{number}"} if number % 2 else None
            if isinstance(child, LoopHistogram):
                child.observe_valid(amount, exemplar)
            else:
                child.observe(amount, exemplar)

    _both(make)


def _both(make: Callable[[MetricClasses, CollectorRegistry], None]) -> None:
    """``make`` run with each set of classes on its own registry; the expositions must match."""
    results = []
    for classes in (STANDARD, LOOP):
        registry = CollectorRegistry()
        make(classes, registry)
        results.append((generate_latest(registry), generate_openmetrics(registry)))  # type: ignore[no-untyped-call]
    assert results[0] == results[1]


def test_errors_and_rare_calls_match_the_standard_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong calls raise the standard errors and leave the same state; unlabelled metrics work as well."""
    monkeypatch.setattr(time, "time", lambda: NOW)

    def make(classes: MetricClasses, registry: CollectorRegistry) -> None:
        counter = classes.counter("c_total", "c", ["a"], registry=registry)
        gauge = classes.gauge("g", "g", ["a"], registry=registry)
        recent = classes.gauge("r", "r", ["a"], registry=registry, multiprocess_mode="livemostrecent")
        histogram = classes.histogram("h", "h", ["a"], buckets=(-1, 0, 1), registry=registry)
        plain = classes.counter("p_total", "p", registry=registry)
        plain_gauge = classes.gauge("pg", "pg", registry=registry)
        plain_histogram = classes.histogram("ph", "ph", registry=registry)
        parent_calls: list[Callable[[], None]] = [
            counter.inc,
            gauge.inc,
            gauge.dec,
            lambda: gauge.set(1),
            lambda: histogram.observe(1),
        ]
        for parent_call in parent_calls:
            with pytest.raises(ValueError, match="missing label values"):
                parent_call()
        with pytest.raises(ValueError, match="non-negative"):
            counter.labels("x").inc(-1)
        counter.labels("x").inc(2, exemplar={"trace_id": "t"})
        with pytest.raises(ValueError, match="Exemplar labels"):
            histogram.labels("x").observe(0.5, exemplar={"k": "v" * 200})  # counted first, then refused
        with pytest.raises(ValueError, match="Reserved label"):
            histogram.labels("x").observe(0.5, exemplar={"__k": "v"})
        histogram.labels("x").observe(-3, exemplar={"k": "v"})
        histogram.labels("x").observe(math.nan, exemplar={"__k": "not checked: no bucket"})
        histogram.labels("y").observe(0)
        for call in (recent.labels("x").inc, recent.labels("x").dec):
            with pytest.raises(RuntimeError, match="mostrecent"):
                call()
        recent.labels("x").set(7)
        gauge.labels("x").set(True)
        plain.inc(0.5)
        plain.reset()
        plain_gauge.set_to_current_time()
        plain_histogram.observe(3)
        with plain_gauge.track_inprogress():
            pass

    _both(make)


def test_exemplar_label_names_outside_the_strict_rule_are_checked_every_time() -> None:
    """A name allowed only by the UTF-8 rule is not remembered: turning the strict rule on refuses it again."""
    from prometheus_client import validation

    histogram = LoopHistogram("u", "u", ["a"], registry=None).labels("x")
    legacy = validation.get_legacy_validation()
    try:
        validation.disable_legacy_validation()  # type: ignore[no-untyped-call]
        histogram.observe(0.1, exemplar={"é": "v"})
        validation.enable_legacy_validation()  # type: ignore[no-untyped-call]
        with pytest.raises(ValueError, match="Invalid label"):
            histogram.observe(0.1, exemplar={"é": "v"})
    finally:
        validation._legacy_validation = legacy


def test_a_single_process_gets_the_lock_free_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert values.ValueClass is values.MutexValue
    assert metric_classes() == LOOP == (LoopCounter, LoopGauge, LoopHistogram)
    metrics = Metrics()
    assert type(metrics.routes["default"].inflight) is LoopGauge
    assert type(metrics.routes["default"].first_token) is LoopHistogram


def test_multiprocess_mode_keeps_the_standard_classes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Set now or when prometheus_client was imported: either way the standard classes are chosen."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert metric_classes() == STANDARD == (Counter, Gauge, Histogram)
    metrics = Metrics()
    route = metrics.routes["default"]
    assert (type(route.upstream_requests), type(route.inflight), type(route.first_token)) == STANDARD
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # type: ignore[no-untyped-call]
    assert metric_classes() == STANDARD


_WORKER = """
import sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from gateway.metrics import CHAT_ROUTE, Metrics

metrics = Metrics()
route = metrics.routes["default"]
route.upstream_requests.inc()
route.inflight.inc()
route.first_token.observe(0.3)
metrics.observe_http(CHAT_ROUTE, "POST", 200, 0.2, "req-1")
print(type(route.upstream_requests).__name__, type(route.upstream_requests._value).__name__)
registry = CollectorRegistry()
MultiProcessCollector(registry)
labels = {"provider": "flowgpt", "route": "default"}
print(registry.get_sample_value("gateway_upstream_requests_total", labels))
print(registry.get_sample_value("gateway_upstream_first_token_seconds_count", labels))
print(registry.get_sample_value("gateway_http_request_duration_seconds_count", {"route": CHAT_ROUTE}))
"""


def test_a_worker_writes_its_values_to_the_mmap_files(tmp_path: Path) -> None:
    """A real worker process (the variable set before import) counts in mmap files, summed by the scrape."""
    root = str(Path(gateway.__file__).parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": path}
    output = subprocess.run(
        [sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split("\n")
    assert output[:4] == ["Counter MmapedValue", "1.0", "1.0", "1.0"]
    assert list(tmp_path.glob("counter_*.db"))
    assert list(tmp_path.glob("histogram_*.db"))
