"""What the status page shows, read from the live objects: one JSON-ready dict, no secrets, no prompts.

The only strings that reach the page are route names (``[a-z0-9_-]``), masked route
URLs, breaker and flag states, probe error messages (as /readyz shows them, but with
any configured secret an upstream may have quoted replaced by ``***``) and the version.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

from aiohttp import web

from gateway import __version__
from gateway.app_keys import FLEET, INFLIGHT, ROUTES, SETTINGS, STARTED_AT, STATUS_SAMPLER, TIMELINE, UPSTREAM
from gateway.metrics import ADMISSION_REASONS, ANSWER_CLASSES
from gateway.redact import Scrubber, mask_url
from gateway.route_pool import Route
from gateway.status_page.sampler import WINDOW_SECONDS, RouteWindow, Spark
from gateway.timeline import RouteClock

MAX_ERROR_CHARS: Final = 160  # a probe error is a one-line reason, not a body

Overall = Literal["serving", "degraded", "down"]
Series = dict[str, Sequence[float | None]]  # requests, failures, first_token: one value per sample step


def overall(ups: list[bool], *, draining: bool) -> Overall:
    """Serving when every route is up, down when none is (or the gateway drains), else degraded."""
    if draining or not any(ups):
        return "down"
    return "serving" if all(ups) else "degraded"


def _probe(route: Route, now: float, scrub: Scrubber) -> dict[str, Any] | None:
    last = route.flag.last_probe
    if last is None:
        return None
    # The prober scrubbed it already; again here for results relayed by other processes.
    error = None if last.error is None else scrub(last.error)[:MAX_ERROR_CHARS]
    return {"ok": last.ok, "latency": round(last.latency, 4), "age": round(max(0.0, now - last.at), 1), "error": error}


def _series(spark: Spark) -> Series:
    return {"requests": spark.requests, "failures": spark.failures, "first_token": spark.first_token}


def _route(
    route: Route,
    url: str,
    window: RouteWindow | None,
    now: float,
    scrub: Scrubber,
    opened_by: str | None,
    clock: RouteClock | None,
) -> dict[str, Any]:
    health = route.health()
    return {
        "name": route.name,
        "url": mask_url(url),
        "weight": route.weight,
        "up": health.up,
        "since_change": None if clock is None else round(clock.age(), 1),
        "working": health.working,
        "working_state": health.flag,  # unknown, checking, working, not_working
        "working_mode": health.flag_mode,
        "breaker": {
            "state": health.breaker,
            "mode": health.breaker_mode,
            "retry_after": round(health.retry_after, 1) if health.open else None,
            "opened_by": opened_by,  # "local", "fleet" (a peer's trip adopted here), or None
        },
        "probe": _probe(route, now, scrub),
        "inflight": route.inflight,
        "requests": None if window is None else window.requests,
        "failures": None if window is None else window.failures,
        "first_token_p50": None if window is None or window.p50 is None else round(window.p50, 4),
        "first_token_p95": None if window is None or window.p95 is None else round(window.p95, 4),
        "failovers": None if window is None else window.failovers,
        "client_errors": None if window is None else window.client_errors,
        "flaps": None if window is None else window.flaps,
        "downtime": None if window is None else round(window.downtime, 1),
    }


def page_data(app: web.Application) -> tuple[dict[str, Any], dict[str, Series]]:
    """The page's content as JSON-ready data, and each route's sparkline series."""
    settings = app[SETTINGS]
    sampler = app[STATUS_SAMPLER]
    limiter = app[UPSTREAM].limiter
    draining = app[INFLIGHT].draining
    now = time.time()
    window, shared, windows = sampler.window(WINDOW_SECONDS)
    urls = {spec.name: spec.url for spec in settings.routes()}
    scrub = settings.scrubber()
    periods = app[FLEET].open_periods() if FLEET in app else {}
    clocks = app[TIMELINE].clocks
    routes = [
        _route(r, urls[r.name], windows.get(r.name), now, scrub, periods.get(r.name), clocks.get(r.name))
        for r in app[ROUTES]
    ]
    data = {
        "state": overall([route["up"] for route in routes], draining=draining),
        "draining": draining,
        "version": __version__,
        # Under serve --workers each worker answers with its own view; the page names which.
        "pid": os.getpid(),
        "workers": settings.workers,
        "uptime": round(time.monotonic() - app[STARTED_AT], 1),
        "generated_at": round(now, 3),
        "refresh": settings.ui_refresh_seconds,
        "step": sampler.interval,
        "window": round(window, 1),
        "inflight": limiter.in_use,
        "limit": limiter.limit,
        "rejections": {reason: shared[reason] for reason in ADMISSION_REASONS},
        "retries": shared["retries"],
        "failovers": shared["failovers"],
        # What clients received over the window: chat answers by status class, streams ended by an error.
        "received": {key: shared[key] for key in (*ANSWER_CLASSES, "stream_errors")},
        "routes": routes,
        "events": app[TIMELINE].events(),  # newest first, at most 100
    }
    return data, {route.name: _series(sampler.spark(route.name)) for route in app[ROUTES]}
