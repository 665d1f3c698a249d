"""OpenTelemetry traces: off (a no-op tracer, nothing allocated per request) unless an endpoint is set.

With ``GATEWAY_OTLP_ENDPOINT`` (an OTLP/HTTP collector's base URL, or its full ``/v1/traces`` URL)
every HTTP request gets a server span (an incoming W3C ``traceparent`` is honoured), every upstream
attempt a client span (route, attempt number, failover or retry, outcome, first-token time, HTTP
status) and every probe a span. The standard ``OTEL_*`` variables apply where the SDK reads them
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its argument,
``OTEL_EXPORTER_OTLP_HEADERS``/``_TIMEOUT``).

Export never touches the request path: spans go to a bounded queue that a background thread sends
in batches. A collector that is down, slow or refusing costs dropped spans and one warning per
outage, never a request. ``traceparent`` is not sent to FlowGpt (a third party) unless
``GATEWAY_OTLP_PROPAGATE_UPSTREAM`` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

QUEUE_SPANS: Final = 2048  # spans waiting for export at most; beyond it they are dropped
EXPORT_TIMEOUT_SECONDS: Final = 5.0
SHUTDOWN_SECONDS: Final = 2.0
_PROPAGATOR: Final = TraceContextTextMapPropagator()
# The SDK's exporter logs every failed batch; _OutageLogger says it once per outage instead.
_NOISY_LOGGERS: Final = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.sdk.trace.export")


class _OutageLogger(SpanExporter):
    """Wraps the exporter: one warning when exports start failing, one line when they work again."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self._failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # the exporter thread must survive a collector's worst answer
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE and not self._failing:
            self._failing = True
            log.warning("trace export failing; spans are dropped until the collector answers")
        elif result is SpanExportResult.SUCCESS and self._failing:
            self._failing = False
            log.info("trace export works again")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector's base URL (a full ``/v1/traces`` URL is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


class Tracing:
    """The gateway's tracer, its export pipeline, and the few helpers the request path needs."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        propagate_upstream: bool = False,
        exporter: SpanExporter | None = None,
        version: str = "",
    ) -> None:
        self._provider: TracerProvider | None = None
        self.enabled = endpoint is not None or exporter is not None
        self.propagate_upstream = self.enabled and propagate_upstream
        if not self.enabled:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only when on

            exporter = OTLPSpanExporter(endpoint=traces_url(endpoint or ""), timeout=EXPORT_TIMEOUT_SECONDS)
            for name in _NOISY_LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL)
        resource = Resource.create({"service.name": "flowgpt-gateway", "service.version": version})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(
            BatchSpanProcessor(
                _OutageLogger(exporter),
                max_queue_size=QUEUE_SPANS,
                schedule_delay_millis=1000,
                export_timeout_millis=int(EXPORT_TIMEOUT_SECONDS * 1000),
            )
        )
        self.tracer = self._provider.get_tracer("flowgpt-gateway", version)

    @contextmanager
    def server_span(self, name: str, headers: Mapping[str, str]) -> Iterator[Span]:
        """The span of one inbound request, a child of the caller's ``traceparent`` if it sent one."""
        parent = _PROPAGATOR.extract(carrier=headers) if self.enabled else None
        with self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
            yield span

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add ``traceparent`` for the current span to outbound ``headers``, if propagation is on."""
        if self.propagate_upstream:
            _PROPAGATOR.inject(headers)

    @staticmethod
    def trace_id() -> str | None:
        """The current trace id (hex), for exemplars and logs; None when nothing is traced."""
        context = trace.get_current_span().get_span_context()
        # An unsampled trace is never exported: an exemplar naming it would link to nothing.
        return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else None

    @staticmethod
    def failed(span: Span, kind: str) -> None:
        """Mark ``span`` as failed with the gateway's error kind as its outcome."""
        span.set_attribute("gateway.outcome", kind)
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))

    def flush(self, timeout: float = 5.0) -> bool:
        """Export what is queued now (tests and shutdown); False if it did not finish in ``timeout``."""
        return self._provider is None or self._provider.force_flush(int(timeout * 1000))

    async def shutdown(self) -> None:
        """Flush what is queued (bounded: a hung collector must not hold up the exit) and stop."""
        provider = self._provider
        if provider is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(provider.shutdown), SHUTDOWN_SECONDS)
        except TimeoutError:
            log.warning("trace export did not finish in %.0f s at shutdown; queued spans dropped", SHUTDOWN_SECONDS)
