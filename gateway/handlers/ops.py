"""Operations endpoints: liveness, readiness and a status summary."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway import __version__
from gateway.redact import mask_url
from gateway.state import BREAKER, HEALTH, INFLIGHT, METRICS, SETTINGS, STARTED_AT


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while serving, 503 once shutdown has begun."""
    if request.app[INFLIGHT].draining:
        return web.json_response({"status": "shutting_down"}, status=503)
    return web.json_response({"status": "ok"})


def _readiness(app: web.Application) -> tuple[bool, dict[str, Any]]:
    health = app[HEALTH]
    draining = app[INFLIGHT].draining
    body: dict[str, Any] = {
        **health.snapshot(),
        "breaker": app[BREAKER].snapshot(),
        "shutting_down": draining,
    }
    ready = health.working and not draining
    body["ready"] = ready
    return ready, body


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 only while the upstream is working and we are not draining."""
    ready, body = _readiness(request.app)
    return web.json_response(body, status=200 if ready else 503)


async def status(request: web.Request) -> web.Response:
    """A JSON summary for people and scripts; secrets masked."""
    app = request.app
    _, readiness = _readiness(app)
    body = {
        "service": "flowgpt-gateway",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - app[STARTED_AT], 3),
        "upstream_url": mask_url(app[SETTINGS].upstream_url),
        "readiness": readiness,
        "counters": app[METRICS].summary(),
        "settings": app[SETTINGS].masked(),
    }
    return web.json_response(body, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()
