"""The application factory: one place that wires every component together.

Each route's components talk through that route's events (:mod:`gateway.events`): the
breaker, the working flag and the prober publish; the route's metrics, the prober's
trigger and the breaker's probe-driven recovery subscribe. Nothing here reaches into
another component's fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import __version__
from gateway.app_keys import (
    API_KEYS,
    CLOCK,
    FLEET,
    HTTP_SESSION,
    INFLIGHT,
    METRICS,
    READY_DEADLINE,
    ROUTES,
    SETTINGS,
    STARTED_AT,
    TIMELINE,
    TOKENS,
    TRACING,
    UPSTREAM,
)
from gateway.breaker import CircuitBreaker
from gateway.events import BreakerChanged, EventBus, ProbeFinished
from gateway.fleet import SharedHealth
from gateway.flowgpt.client import ClientObserver, FlowGptClient
from gateway.handlers import admin, chat, models, ops, runbook, ui
from gateway.inflight import InFlightTracker
from gateway.limiter import ConcurrencyLimiter
from gateway.metrics import Metrics
from gateway.middlewares import add_request_id_header, middlewares_for
from gateway.probe import Prober
from gateway.probe_lease import LinkState, ProbeLease
from gateway.retry import RetryBudget, RetryPolicy
from gateway.route_config import RouteSpec
from gateway.route_pool import Route, RoutePool
from gateway.scope import Scopes
from gateway.settings import Settings
from gateway.timeline import Timeline
from gateway.tokens import shared_counter
from gateway.tracing import Tracing
from gateway.upstream import Timeouts, UpstreamService
from gateway.working import WorkingFlag


def create_app(
    settings: Settings, *, clock: Callable[[], float] = time.monotonic, span_exporter: SpanExporter | None = None
) -> web.Application:
    """Build the gateway. No I/O happens here; the HTTP session, the routes and their probes start with the app.

    ``span_exporter`` turns tracing on with that exporter (tests); otherwise ``GATEWAY_OTLP_ENDPOINT`` decides.
    """
    api_keys = tuple(key.get_secret_value().encode() for key in settings.api_keys)
    app = web.Application(
        middlewares=middlewares_for(api_keys),
        client_max_size=settings.max_body_bytes,
        handler_args={
            "max_field_size": settings.max_header_bytes,
            "max_line_size": settings.max_header_bytes,
            # Also bounds a client that never finishes its headers (aiohttp's default is an hour).
            "keepalive_timeout": settings.keepalive_timeout,
        },
    )
    metrics = Metrics(
        routes=tuple(spec.name for spec in settings.routes()), shared_state=settings.redis_url is not None
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[METRICS] = metrics
    app[INFLIGHT] = InFlightTracker()
    app[TIMELINE] = Timeline(fail_max=settings.breaker_fail_max, clock=clock)
    app[STARTED_AT] = time.monotonic()
    app[API_KEYS] = api_keys
    tracing = app[TRACING] = Tracing(
        endpoint=settings.otlp_endpoint,
        propagate_upstream=settings.otlp_propagate_upstream,
        exporter=span_exporter,
        version=__version__,
    )
    app.on_cleanup.append(lambda _: tracing.shutdown())
    app.cleanup_ctx.append(_tokens_context)
    app.cleanup_ctx.append(_upstream_context)
    app.on_response_prepare.append(add_request_id_header)

    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{id}", models.get_model)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/status", ops.status)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.scrape_registry()))
    app.router.add_get("/admin/state", admin.get_admin_state)
    app.router.add_get(runbook.RUNBOOK_PATH, runbook.runbook)
    app.router.add_post("/admin/breaker", admin.set_breaker_mode)
    app.router.add_post("/admin/working", admin.set_working_mode)
    ui.setup(app)  # the status page at / (GATEWAY_UI)
    metrics.precreate_routes(
        [(r.resource.canonical, r.method) for r in app.router.routes() if r.resource and r.method != "HEAD"]
    )
    return app


async def _tokens_context(app: web.Application) -> AsyncIterator[None]:
    """Load and verify the token encoding once per process, off the event loop; a bad file stops start-up."""
    app[TOKENS] = await asyncio.to_thread(shared_counter)
    yield


async def _upstream_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    clock = app[CLOCK]
    # One session per app: connection pooling across requests, closed on exit. aiohttp keys
    # pooled connections by proxy too, so a route with its own proxy has its own connections.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
    app[HTTP_SESSION] = session
    tracing = app[TRACING]
    # Made before both the routes' probe leases and the fleet's link, so each gets it at construction.
    link_state = LinkState()
    routes = RoutePool(
        [make_route(session, spec, settings, metrics, clock, tracing, link_state) for spec in settings.routes()]
    )
    app[ROUTES] = routes
    for route in routes:
        app[TIMELINE].watch(route)
    app[UPSTREAM] = UpstreamService(
        routes,
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
        tracing=app[TRACING],
    )
    fleet = None
    if settings.redis_url is not None:
        fleet = app[FLEET] = SharedHealth(
            routes,
            link_state=link_state,
            url=settings.redis_url.get_secret_value(),
            prefix=settings.redis_prefix,
            timeout=settings.redis_timeout,
            probe_interval=settings.probe_interval,
            trial_window=settings.timeout_connect + settings.timeout_first_token,
            clock=clock,
            on_state=metrics.shared_state_changed,
            probing=settings.probe_enabled,
        )
        fleet.start()
    app[READY_DEADLINE] = clock() + settings.ready_grace
    if settings.probe_enabled:
        # A process joining a fleet adopts its recent probe results (or takes a lease and probes
        # then) instead of adding a probe per process and route to every restart.
        for route in routes:
            route.prober.start(after=fleet.joined if fleet is not None else None)
    try:
        yield
    finally:
        for route in routes:
            await route.prober.stop()
        if fleet is not None:
            await fleet.stop()
        for route in routes:
            route.breaker.stop()
        await session.close()


def make_route(
    session: aiohttp.ClientSession,
    spec: RouteSpec,
    settings: Settings,
    metrics: Metrics,
    clock: Callable[[], float] = time.monotonic,
    tracing: Tracing | None = None,
    link_state: LinkState | None = None,
) -> Route:
    """One route as its settings describe it, wired through its own event bus (also used by ``probe``).

    ``link_state``: the fleet's, whose lease then decides who probes; without one this process always does.
    """
    events = EventBus()
    route_metrics = metrics.routes[spec.name]
    route_metrics.subscribe(events)
    flag = WorkingFlag(
        healthy_threshold=settings.probe_healthy_threshold,
        unhealthy_threshold=settings.probe_unhealthy_threshold,
        clock=clock,
        events=events,
        route=spec.name,
    )
    breaker = CircuitBreaker(
        name=spec.name,
        fail_max=settings.breaker_fail_max,
        reset_timeout=settings.breaker_reset_seconds,
        reset_multiplier=settings.breaker_reset_multiplier,
        reset_max=settings.breaker_reset_max_seconds,
        half_open_calls=settings.breaker_half_open_calls,
        clock=clock,
        events=events,
    )
    client = make_client(session, spec, settings, route_metrics, clock, tracing)
    lease = ProbeLease(link_state or LinkState(), probe_interval=settings.probe_interval, clock=clock)
    prober = Prober(
        client,
        flag,
        events,
        interval=settings.probe_interval,
        unhealthy_interval=settings.probe_unhealthy_interval,
        timeout=settings.probe_deadline,
        model=settings.probe_model,
        prompt=settings.probe_prompt,
        clock=clock,
        scrub=settings.scrubber(),
        tracing=tracing,
        lease=lease,
    )
    events.subscribe(ProbeFinished, flag.probe_finished)
    events.subscribe(ProbeFinished, breaker.probe_finished)
    if settings.probe_enabled:
        events.subscribe(BreakerChanged, prober.breaker_changed)
    return Route(
        name=spec.name,
        weight=spec.weight,
        client=client,
        breaker=breaker,
        flag=flag,
        prober=prober,
        lease=lease,
        events=events,
        metrics=route_metrics,
        scopes=Scopes.of(spec.name, spec.url, spec.proxy_url, spec.egress or settings.egress),
    )


def make_client(
    session: aiohttp.ClientSession,
    spec: RouteSpec,
    settings: Settings,
    observer: ClientObserver,
    clock: Callable[[], float] = time.monotonic,
    tracing: Tracing | None = None,
) -> FlowGptClient:
    """The FlowGpt client of one route."""
    return FlowGptClient(
        session,
        url=spec.url,
        token=spec.token,
        proxy=spec.proxy_url,
        connect_timeout=settings.timeout_connect,
        max_line_bytes=settings.upstream_max_line_bytes,
        observer=observer,
        clock=clock,
        route=spec.name,
        scrub=settings.scrubber(),
        add_headers=tracing.inject if tracing is not None and tracing.propagate_upstream else None,
    )
