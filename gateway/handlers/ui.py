"""The status page: ``GET /`` and ``/ui`` (HTML) and ``GET /ui/data`` (JSON), as ``GATEWAY_UI`` says.

``on`` serves them to anyone who can reach the gateway (they show no secrets);
``off`` registers nothing, so the paths are 404 like any unknown one; ``admin`` asks
for ``GATEWAY_ADMIN_TOKEN``. A browser cannot put a header on a navigation, so the
token is taken as an HTTP Basic password (any user name; the browser prompts once
and sends it again with the page's own requests), or as ``Authorization: Bearer``
for scripts, as on ``/admin``. Either way it crosses the network as plainly as the
admin endpoints' bearer token: serve the gateway behind TLS when it leaves the host.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.app_keys import INFLIGHT, METRICS, ROUTES, SETTINGS, STATUS_SAMPLER, STATUS_SNAPSHOT, TIMELINE
from gateway.errors import AuthenticationError
from gateway.middlewares import error_response
from gateway.status_page.cache import Reused
from gateway.status_page.data import page_data
from gateway.status_page.render import SECURITY_HEADERS, render_page
from gateway.status_page.sampler import Sampler
from gateway.status_page.view import page_view

log = logging.getLogger(__name__)

PAGE_PATHS: Final = ("/", "/ui")
DATA_PATH: Final = "/ui/data"
# Relative, so the page still finds its data behind a reverse proxy that adds a path prefix.
_DATA_SOURCE: Final = DATA_PATH.lstrip("/")
SNAPSHOT_MAX_AGE: Final = 1.0  # seconds; well under any refresh interval worth having
_CHALLENGE: Final = 'Basic realm="flowgpt-gateway status", charset="UTF-8"'


def setup(app: web.Application) -> None:
    """Register the page, its data and the sampler, unless ``GATEWAY_UI=off``."""
    settings = app[SETTINGS]
    if settings.ui == "off":
        return
    if settings.ui == "on" and settings.api_keys:
        # The API is closed but the page (route URLs masked, probe errors, traffic) is not: say so once.
        log.warning(
            "status page open to anyone who reaches the gateway while GATEWAY_API_KEYS is set; "
            "set GATEWAY_UI=admin (with GATEWAY_ADMIN_TOKEN) or GATEWAY_UI=off to close it"
        )
    # The sampler's time is wall-clock spacing of samples, not a decision: the real monotonic clock.
    app[STATUS_SAMPLER] = Sampler(app[METRICS], interval=settings.ui_sample_seconds, route_clocks=app[TIMELINE].clocks)
    app[STATUS_SNAPSHOT] = Reused(SNAPSHOT_MAX_AGE)
    app.cleanup_ctx.append(_sampler_context)
    for path in PAGE_PATHS:
        app.router.add_get(path, page)
    app.router.add_get(DATA_PATH, data)


async def _sampler_context(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[STATUS_SAMPLER].run(), name="status-page-sampler")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _presented(header: str) -> bytes | None:
    """The token in ``Authorization``: a bearer token, or a Basic password; None when there is none."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value.encode()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(b":")
        return password if colon else None
    return None


def _refusal(request: web.Request) -> web.Response | None:
    """None when the caller may see the page; else the 401 that makes a browser ask for the password."""
    settings = request.app[SETTINGS]
    if settings.ui != "admin":
        return None
    token = settings.admin_token  # settings refuse admin without one; were it missing, nothing opens
    expected = None if token is None else token.get_secret_value().encode()
    presented = _presented(request.headers.get("Authorization", ""))
    if expected is not None and presented is not None and hmac.compare_digest(presented, expected):
        return None
    response = error_response(
        AuthenticationError(
            "the status page needs GATEWAY_ADMIN_TOKEN, as the HTTP Basic password or an Authorization: Bearer token"
        )
    )
    response.headers["WWW-Authenticate"] = _CHALLENGE
    response.headers.update(SECURITY_HEADERS)
    return response


async def page(request: web.Request) -> web.Response:
    """The status page, rendered with the current data."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    _, view = _snapshot(request.app)
    html = render_page(view, source=_DATA_SOURCE, refresh=request.app[SETTINGS].ui_refresh_seconds)
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


async def data(request: web.Request) -> web.Response:
    """The page's data and its display text (``view``), for the page's refresh and for scripts."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    body, _ = _snapshot(request.app)
    return web.Response(body=body, content_type="application/json", headers=SECURITY_HEADERS)


def _snapshot(app: web.Application) -> tuple[bytes, dict[str, Any]]:
    """The data endpoint's body and the page's view, built at most once per SNAPSHOT_MAX_AGE."""

    def build() -> tuple[bytes, dict[str, Any]]:
        data, series = page_data(app)
        data["view"] = page_view(data, series)
        return orjson.dumps(data), data["view"]

    # What the page shows of each route's health; the record itself holds fresh error objects, never equal.
    states = tuple((h.working, h.breaker, h.breaker_mode) for h in (r.health() for r in app[ROUTES]))
    return app[STATUS_SNAPSHOT].get(build, key=(app[INFLIGHT].draining, states))
