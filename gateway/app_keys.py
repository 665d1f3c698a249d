"""Every piece of application state, as typed keys declared in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway.fleet import SharedHealth
from gateway.inflight import InFlightTracker
from gateway.metrics import Metrics
from gateway.route_pool import RoutePool
from gateway.settings import Settings
from gateway.status_page.cache import Reused
from gateway.status_page.sampler import Sampler
from gateway.timeline import Timeline
from gateway.tokens import TokenCounter
from gateway.tracing import Tracing
from gateway.upstream import UpstreamService

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
ROUTES = web.AppKey("routes", RoutePool)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", UpstreamService)
STARTED_AT = web.AppKey("started_at", float)
INFLIGHT = web.AppKey("inflight", InFlightTracker)
# Absent without GATEWAY_REDIS_URL.
FLEET = web.AppKey("fleet", SharedHealth)
TIMELINE = web.AppKey("timeline", Timeline)  # the routes' last state changes and up/down clocks
STATUS_SAMPLER = web.AppKey("status_sampler", Sampler)  # only while GATEWAY_UI is not off
# The page's JSON body and view, built at most once a second (only while GATEWAY_UI is not off).
STATUS_SNAPSHOT: web.AppKey[Reused[tuple[bytes, dict[str, Any]]]] = web.AppKey("status_snapshot")
TOKENS = web.AppKey("tokens", TokenCounter)  # cl100k_base, loaded in the background at start-up
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")  # the monotonic clock time decisions use
# CLOCK reading until which /readyz waits for a first probe answer (start-up + GATEWAY_READY_GRACE).
READY_DEADLINE = web.AppKey("ready_deadline", float)
API_KEYS: web.AppKey[tuple[bytes, ...]] = web.AppKey("api_keys")  # encoded once, compared per request
REQUEST_ID = web.RequestKey("request_id", str)
TRACING = web.AppKey("tracing", Tracing)
STREAM_RESPONSE = web.RequestKey("stream_response", web.StreamResponse)
# Refused fields dropped under GATEWAY_DROP_PARAMS, comma-separated: the x-gateway-dropped-params header.
DROPPED_PARAMS = web.RequestKey("dropped_params", str)
# The status to record when it differs from the response's (a stream whose client was cut: 499).
STATUS_OVERRIDE = web.RequestKey("status_override", int)
