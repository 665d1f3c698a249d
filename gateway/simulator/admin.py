"""The simulator's control API under ``/_sim``: faults, stats and routes, read and changed at run time."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.simulator.contract import describe_error
from gateway.simulator.faults import SimFaults
from gateway.simulator.routes import DEFAULT_ROUTE, Route, RouteError, route_path
from gateway.simulator.state import SIM_STATE

logger = logging.getLogger(__name__)


def _route(request: web.Request) -> Route | web.Response:
    """The route named by ``?route=`` (default: the default route), or the JSON error for it."""
    name = request.query.get("route", DEFAULT_ROUTE)
    try:
        return request.app[SIM_STATE].routes.get(name)
    except RouteError as exc:
        payload = {"message": str(exc)} | ({"field": "route"} if exc.status == 400 else {})
        return web.json_response(payload, status=exc.status)


async def get_faults(request: web.Request) -> web.Response:
    """GET /_sim/faults[?route=]: the faults now in force on a route."""
    route = _route(request)
    if isinstance(route, web.Response):
        return route
    return web.json_response(route.faults.model_dump())


async def set_faults(request: web.Request) -> web.Response:
    """POST /_sim/faults[?route=]: replace all of a route's faults (unset fields go back to healthy)."""
    # The route first, so a bad name is reported whatever the body (which may be bad too).
    route = _route(request)
    if isinstance(route, web.Response):
        return route
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"message": "body is not valid JSON"}, status=400)
    try:
        faults = SimFaults.model_validate(payload)
    except ValidationError as exc:
        field, message = describe_error(exc)
        return web.json_response({"message": message, "field": field}, status=400)
    route.faults = faults
    logger.info("faults set route=%s: %s", route.name, faults.model_dump(exclude_defaults=True))
    return web.json_response(faults.model_dump())


async def heal(request: web.Request) -> web.Response:
    """DELETE /_sim/faults[?route=]: that route back to a healthy upstream."""
    route = _route(request)
    if isinstance(route, web.Response):
        return route
    route.faults = SimFaults()
    logger.info("faults cleared route=%s", route.name)
    return web.json_response(route.faults.model_dump())


async def get_stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: the global counters; with ?route= that route's own."""
    state = request.app[SIM_STATE]
    if "route" not in request.query:
        return web.json_response(state.stats.to_dict())
    route = _route(request)
    if isinstance(route, web.Response):
        return route
    return web.json_response(route.stats.to_dict())


async def reset_stats(request: web.Request) -> web.Response:
    """POST /_sim/stats/reset: zero all counters, global and per route (active_streams stays truthful)."""
    state = request.app[SIM_STATE]
    state.reset_stats()
    return web.json_response(state.stats.to_dict())


async def get_routes(request: web.Request) -> web.Response:
    """GET /_sim/routes: every route in use with its path, the faults set on it and its request count."""
    routes = request.app[SIM_STATE].routes
    listing = {
        route.name: {
            "path": route_path(route.name),
            "faults": route.faults.model_dump(exclude_defaults=True),
            "requests_total": route.stats.requests_total,
        }
        for route in routes
    }
    return web.json_response({"max_routes": routes.limit, "routes": listing})


async def healthz(request: web.Request) -> web.Response:
    """GET /_sim/healthz: liveness of the simulator itself, whatever the faults."""
    return web.json_response({"status": "ok", "faults_active": request.app[SIM_STATE].faults.active})
