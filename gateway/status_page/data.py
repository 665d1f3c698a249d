"""What the status page shows, read from the live objects: one JSON-ready dict, no secrets, no prompts.

The only strings that reach the page are route names (``[a-z0-9_-]``), masked route
URLs, breaker and flag states, probe error messages (as /readyz shows them, but with
any configured secret an upstream may have quoted replaced by ``***``) and the version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final, Literal

from aiohttp import web
from yarl import URL

from gateway import __version__
from gateway.app_keys import INFLIGHT, ROUTES, SETTINGS, STARTED_AT, STATUS_SAMPLER, UPSTREAM
from gateway.flowgpt.protocol import ANONYMOUS_TOKEN
from gateway.metrics import ADMISSION_REASONS
from gateway.redact import MASK, mask_url
from gateway.route_pool import Route
from gateway.settings import Settings
from gateway.status_page.sampler import RouteWindow, Spark

WINDOW_SECONDS: Final = 300.0  # "last 5 minutes"
MAX_ERROR_CHARS: Final = 160  # a probe error is a one-line reason, not a body
MIN_SECRET_CHARS: Final = 4

Overall = Literal["serving", "degraded", "down"]
Series = dict[str, Sequence[float | None]]  # requests, failures, first_token: one value per sample step


def route_up(route: Route) -> bool:
    """Whether the route takes traffic now or is about to: working, and its breaker not open."""
    return route.flag.working and route.breaker.state != "open" and route.breaker.mode != "forced_open"


def overall(ups: list[bool], *, draining: bool) -> Overall:
    """Serving when every route is up, down when none is (or the gateway drains), else degraded."""
    if draining or not any(ups):
        return "down"
    return "serving" if all(ups) else "degraded"


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every configured secret, and the probe prompt: text the page must never show, even quoted by an upstream."""
    values = [settings.probe_prompt, *(key.get_secret_value() for key in settings.api_keys)]
    if settings.admin_token is not None:
        values.append(settings.admin_token.get_secret_value())
    for spec in settings.routes():
        values.append(spec.token.get_secret_value())
        if spec.proxy_url is not None:
            proxy = URL(spec.proxy_url)
            values.extend(part for part in (spec.proxy_url, proxy.user, proxy.password) if part)
    # The anonymous token is public; short strings would blank ordinary words.
    kept = {value for value in values if len(value) >= MIN_SECRET_CHARS and value != ANONYMOUS_TOKEN}
    return tuple(sorted(kept, key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced by ``***`` (longest first, so a proxy URL goes before its password).

    Error messages quote upstream bodies cut to a length, so a secret's first characters
    may end the text: such a tail is masked too.
    """
    for secret in secrets:
        text = text.replace(secret, MASK)
        for length in range(len(secret) - 1, MIN_SECRET_CHARS - 1, -1):
            if text.endswith(secret[:length]):
                text = text[: len(text) - length] + MASK
                break
    return text


def _probe(route: Route, now: float, secrets: tuple[str, ...]) -> dict[str, Any] | None:
    last = route.flag.last_probe
    if last is None:
        return None
    # An upstream's error body may quote what it was sent (the prompt, a token): scrub before cutting.
    error = None if last.error is None else scrub(last.error, secrets)[:MAX_ERROR_CHARS]
    return {"ok": last.ok, "latency": round(last.latency, 4), "age": round(max(0.0, now - last.at), 1), "error": error}


def _series(spark: Spark) -> Series:
    return {"requests": spark.requests, "failures": spark.failures, "first_token": spark.first_token}


def _route(route: Route, url: str, window: RouteWindow | None, now: float, secrets: tuple[str, ...]) -> dict[str, Any]:
    breaker = route.breaker
    state = breaker.state
    open_now = state == "open" or breaker.mode == "forced_open"
    return {
        "name": route.name,
        "url": mask_url(url),
        "weight": route.weight,
        "up": route_up(route),
        "working": route.flag.working,
        "working_mode": route.flag.mode,
        "breaker": {
            "state": state,
            "mode": breaker.mode,
            "retry_after": round(breaker.retry_after(), 1) if open_now else None,
        },
        "probe": _probe(route, now, secrets),
        "inflight": route.inflight,
        "requests": None if window is None else window.requests,
        "failures": None if window is None else window.failures,
        "first_token_p50": None if window is None or window.p50 is None else round(window.p50, 4),
        "first_token_p95": None if window is None or window.p95 is None else round(window.p95, 4),
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
    secrets = secret_values(settings)
    routes = [_route(r, urls[r.name], windows.get(r.name), now, secrets) for r in app[ROUTES]]
    data = {
        "state": overall([route["up"] for route in routes], draining=draining),
        "draining": draining,
        "version": __version__,
        "uptime": round(time.monotonic() - app[STARTED_AT], 1),
        "generated_at": round(now, 3),
        "refresh": settings.ui_refresh_seconds,
        "step": sampler.interval,
        "window": round(window, 1),
        "inflight": limiter.in_use,
        "limit": limiter.limit,
        "rejections": {reason: shared[reason] for reason in ADMISSION_REASONS},
        "retries": shared["retries"],
        "routes": routes,
    }
    return data, {route.name: _series(sampler.spark(route.name)) for route in app[ROUTES]}
