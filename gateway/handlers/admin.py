"""Operator controls: pin the breaker or the working flag, guarded by ``GATEWAY_ADMIN_TOKEN``.

Without a configured token the endpoints do not exist (404), so an unconfigured
deployment exposes no control surface at all.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web

from gateway.app_keys import FLEET, ROUTES, SETTINGS
from gateway.errors import AuthenticationError, ForbiddenError, InvalidRequestError, NotFoundError
from gateway.fleet.messages import OverrideTarget
from gateway.handlers.ops import route_snapshot
from gateway.route_pool import Route
from gateway.working import WorkingMode

_BREAKER_MODES = ("open", "closed", "auto")
_WORKING_MODES: tuple[WorkingMode, ...] = ("working", "not_working", "auto")


def _authorize(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    if token is None:
        raise NotFoundError(f"no route for {request.method} {request.path[:200]}")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise AuthenticationError("admin endpoints need Authorization: Bearer <GATEWAY_ADMIN_TOKEN>")
    if not hmac.compare_digest(presented.strip().encode(), token.get_secret_value().encode()):
        raise ForbiddenError("wrong admin token")


async def _command(request: web.Request, allowed: tuple[str, ...]) -> tuple[str, list[Route]]:
    """The body's ``mode`` and the routes it applies to (``route``, or every route when absent)."""
    try:
        body: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidRequestError('body must be JSON like {"mode": "auto"}', code="invalid_json") from None
    if not isinstance(body, dict):
        body = {}
    mode = body.get("mode")
    if mode not in allowed:
        raise InvalidRequestError(f"'mode' must be one of {', '.join(allowed)}", param="mode")
    routes = request.app[ROUTES]
    if "route" not in body:
        return str(mode), list(routes)
    # An explicit null is refused, not read as "every route": a template that failed to fill in
    # a route name must not force every route at once.
    name = body["route"]
    if not isinstance(name, str) or name not in routes:
        known = ", ".join(route.name for route in routes)
        raise InvalidRequestError(f"'route' must be one of {known} (or absent for every route)", param="route")
    return str(mode), [routes[name]]


def _state(request: web.Request, *, shared: bool | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"routes": [route_snapshot(route) for route in request.app[ROUTES]]}
    if FLEET in request.app:
        # False: Redis is unreachable; the change holds here and reaches the fleet on reconnection.
        body["shared"] = shared
    return body


async def _share(request: web.Request, target: OverrideTarget, mode: str, routes: list[Route]) -> bool | None:
    """Store the operator's mode fleet-wide, when there is a fleet; whether every write succeeded."""
    if FLEET not in request.app:
        return None
    fleet = request.app[FLEET]
    results = [await fleet.share_override(route.name, target, mode) for route in routes]
    return all(results)


async def get_admin_state(request: web.Request) -> web.Response:
    """Every route's breaker and working flag as the gateway sees them."""
    _authorize(request)
    return web.json_response(_state(request))


async def set_breaker_mode(request: web.Request) -> web.Response:
    """``{"mode": "open" | "closed" | "auto", "route": name?}``: force the breakers or hand them back."""
    _authorize(request)
    mode, routes = await _command(request, _BREAKER_MODES)
    for route in routes:
        breaker = route.breaker
        {"open": breaker.force_open, "closed": breaker.force_closed, "auto": breaker.automatic}[mode]()
    return web.json_response(_state(request, shared=await _share(request, "breaker", mode, routes)))


async def set_working_mode(request: web.Request) -> web.Response:
    """``{"mode": "working" | "not_working" | "auto", "route": name?}``: pin working flags for maintenance."""
    _authorize(request)
    mode, routes = await _command(request, _WORKING_MODES)
    for route in routes:
        route.flag.set_mode(mode)  # type: ignore[arg-type]
    return web.json_response(_state(request, shared=await _share(request, "working", mode, routes)))
