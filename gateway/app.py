"""The application factory: one place that wires every component together.

Components talk through events (:mod:`gateway.events`): the breaker, the working flag and
the prober publish; the metrics, the prober's trigger and the breaker's probe-driven
recovery subscribe. Nothing here reaches into another component's fields.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.breaker import CircuitBreaker
from gateway.events import BreakerChanged, EventBus, ProbeFinished
from gateway.flowgpt.client import FlowGptClient
from gateway.handlers import admin, chat, models, ops
from gateway.health import HealthState
from gateway.inflight import InFlightTracker
from gateway.limiter import ConcurrencyLimiter
from gateway.metrics import Metrics
from gateway.middlewares import add_request_id_header, api_key_auth, errors, observe
from gateway.probe import Prober
from gateway.retry import RetryBudget
from gateway.settings import Settings
from gateway.state import (
    API_KEYS,
    BREAKER,
    CLOCK,
    EVENTS,
    HEALTH,
    HTTP_SESSION,
    INFLIGHT,
    METRICS,
    PROBER,
    SETTINGS,
    STARTED_AT,
    UPSTREAM,
)
from gateway.upstream import RetryPolicy, Timeouts, UpstreamService


def create_app(settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> web.Application:
    """Build the gateway. No I/O happens here; the HTTP session and the probe start with the app."""
    app = web.Application(
        middlewares=[observe, errors, api_key_auth],
        client_max_size=settings.max_body_bytes,
        handler_args={
            "max_field_size": settings.max_header_bytes,
            "max_line_size": settings.max_header_bytes,
            # Also bounds a client that never finishes its headers (aiohttp's default is an hour).
            "keepalive_timeout": settings.keepalive_timeout,
        },
    )
    events = EventBus()
    metrics = Metrics()
    metrics.subscribe(events)
    health = HealthState(
        healthy_threshold=settings.probe_healthy_threshold,
        unhealthy_threshold=settings.probe_unhealthy_threshold,
        clock=clock,
        events=events,
    )
    breaker = CircuitBreaker(
        fail_max=settings.breaker_fail_max,
        reset_timeout=settings.breaker_reset_seconds,
        reset_multiplier=settings.breaker_reset_multiplier,
        reset_max=settings.breaker_reset_max_seconds,
        half_open_calls=settings.breaker_half_open_calls,
        clock=clock,
        events=events,
    )
    events.subscribe(ProbeFinished, health.probe_finished)
    events.subscribe(ProbeFinished, breaker.probe_finished)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[EVENTS] = events
    app[METRICS] = metrics
    app[HEALTH] = health
    app[BREAKER] = breaker
    app[INFLIGHT] = InFlightTracker()
    app[STARTED_AT] = time.monotonic()
    app[API_KEYS] = tuple(key.get_secret_value().encode() for key in settings.api_keys)
    app.cleanup_ctx.append(_upstream_context)
    app.on_response_prepare.append(add_request_id_header)

    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{id}", models.get_model)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/status", ops.status)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/admin/state", admin.get_admin_state)
    app.router.add_post("/admin/breaker", admin.set_breaker_mode)
    app.router.add_post("/admin/working", admin.set_working_mode)
    metrics.precreate_routes(
        [(r.resource.canonical, r.method) for r in app.router.routes() if r.resource and r.method != "HEAD"]
    )
    return app


async def _upstream_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    clock = app[CLOCK]
    # One session per app: connection pooling across requests, closed on exit.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
    client = make_client(session, settings, metrics, clock)
    app[HTTP_SESSION] = session
    app[UPSTREAM] = UpstreamService(
        client,
        breaker=app[BREAKER],
        health=app[HEALTH],
        limiter=ConcurrencyLimiter(settings.max_concurrency, queue_timeout=settings.queue_timeout),
        budget=RetryBudget(ratio=settings.retry_budget_ratio, minimum=settings.retry_budget_min, clock=clock),
        metrics=metrics,
        timeouts=Timeouts(
            first_token=settings.timeout_first_token,
            idle=settings.timeout_idle,
            total=settings.timeout_total,
            client_write=settings.timeout_client_write,
        ),
        retry=RetryPolicy(
            max_retries=settings.retry_max,
            backoff_base=settings.retry_backoff_base,
            backoff_max=settings.retry_backoff_max,
        ),
        clock=clock,
    )
    prober = make_prober(client, app[HEALTH], app[EVENTS], settings, clock)
    app[PROBER] = prober
    if settings.probe_enabled:
        app[EVENTS].subscribe(BreakerChanged, prober.breaker_changed)
        prober.start()
    try:
        yield
    finally:
        await prober.stop()
        app[BREAKER].stop()
        await session.close()


def make_client(
    session: aiohttp.ClientSession,
    settings: Settings,
    metrics: Metrics,
    clock: Callable[[], float] = time.monotonic,
) -> FlowGptClient:
    """The FlowGpt client as the settings describe it (also used by the ``probe`` command)."""
    return FlowGptClient(
        session,
        url=settings.upstream_url,
        token=settings.upstream_token,
        proxy=settings.upstream_proxy,
        connect_timeout=settings.timeout_connect,
        max_line_bytes=settings.upstream_max_line_bytes,
        observer=metrics,
        clock=clock,
    )


def make_prober(
    client: FlowGptClient,
    health: HealthState,
    events: EventBus,
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
) -> Prober:
    """The health prober as the settings describe it (also used by the ``probe`` command)."""
    return Prober(
        client,
        health,
        events,
        interval=settings.probe_interval,
        unhealthy_interval=settings.probe_unhealthy_interval,
        timeout=settings.probe_deadline,
        model=settings.probe_model,
        prompt=settings.probe_prompt,
        clock=clock,
    )
