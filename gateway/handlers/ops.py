"""Operations endpoints: liveness, readiness and a status summary."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from aiohttp import web

from gateway import __version__
from gateway.app_keys import CLOCK, FLEET, INFLIGHT, METRICS, READY_DEADLINE, ROUTES, SETTINGS, STARTED_AT, TIMELINE
from gateway.health import Health
from gateway.route_pool import Route
from gateway.settings import describe_route


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while serving, 503 once shutdown has begun."""
    if request.app[INFLIGHT].draining:
        return web.json_response({"status": "shutting_down"}, status=503)
    return web.json_response({"status": "ok"})


def route_snapshot(route: Route, health: Health | None = None) -> dict[str, Any]:
    """One route's working flag, probe and breaker, for /readyz, /status and /admin/state.

    Every state in it comes from ``health`` (the route's one health record); the flag and the
    breaker add only their counters.
    """
    health = health or route.health()
    flag, breaker = route.flag, route.breaker
    return {
        "name": route.name,
        "working": health.working,
        "state": health.flag,
        "mode": health.flag_mode,
        **flag.counters(),
        "breaker": {
            "name": breaker.name,
            "state": health.breaker,
            "mode": health.breaker_mode,
            "consecutive_failures": breaker.consecutive_failures,
            "retry_after": health.retry_after,
            "open_duration": breaker.current_open_duration,
        },
    }


def _readiness(app: web.Application) -> tuple[bool, dict[str, Any]]:
    routes = app[ROUTES]
    draining = app[INFLIGHT].draining
    healths = [(route, route.health()) for route in routes]
    working = any(health.working for _, health in healths)
    # Honest at start-up: until one route has passed a probe (or been pinned working by an operator),
    # "working" is only a default, so say not ready, for at most GATEWAY_READY_GRACE. A route whose
    # first probe failed, or that is still checking, does not count: any route may answer 401.
    unprobed = (
        app[SETTINGS].probe_enabled
        and not any(health.confirmed for _, health in healths)
        and app[CLOCK]() < app[READY_DEADLINE]
    )
    ready = working and not draining and not unprobed
    body: dict[str, Any] = {
        "ready": ready,
        "working": working,  # at least one route works (or is not yet probed)
        "shutting_down": draining,
        "routes": [route_snapshot(route, health) for route, health in healths],
    }
    if not ready:
        body["reason"] = "shutting down" if draining else "no route is working" if not working else "not yet probed"
    return ready, body


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 while a route works and we are not draining; 503 "not yet probed" at start-up."""
    ready, body = _readiness(request.app)
    return web.json_response(body, status=200 if ready else 503)


async def status(request: web.Request) -> web.Response:
    """A JSON summary for people and scripts; secrets masked."""
    app = request.app
    _, readiness = _readiness(app)
    configured = {spec.name: describe_route(spec) for spec in app[SETTINGS].routes()}
    for route in readiness["routes"]:
        route["config"] = configured[route["name"]]
        route["inflight"] = app[ROUTES][route["name"]].inflight
    body = {
        "service": "flowgpt-gateway",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - app[STARTED_AT], 3),
        "pid": os.getpid(),  # under serve --workers: which worker answered
        "readiness": readiness,
        "counters": app[METRICS].summary(),
        "events": app[TIMELINE].events(),  # the last state changes, newest first, with reasons
        "settings": app[SETTINGS].masked(),
        # None: no GATEWAY_REDIS_URL, this process decides alone by design.
        "shared_state": app[FLEET].snapshot() if FLEET in app else None,
    }
    return web.json_response(body, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()
