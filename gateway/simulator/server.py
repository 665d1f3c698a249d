"""Assembling the simulator application, its admin API, and running it on a socket.

``Simulator`` keeps one ``SimState`` and builds a fresh application on every start,
so it can stop (clients get "connection refused") and start again on the same port
with its faults, stats and routes intact.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final, Self

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator.app import SIM_STATE, SimState, chat
from gateway.simulator.faults import SimFaults, SimOptions, describe_error
from gateway.simulator.routes import DEFAULT_ROUTE, ROUTE_PATH, Route, RouteError, route_path
from gateway.simulator.stats import SimStats

logger = logging.getLogger(__name__)

# A backstop only: on_shutdown already ends every stream, so handlers finish at once.
_SHUTDOWN_TIMEOUT: Final = 0.5


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


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    async with app[SIM_STATE].running():
        yield


async def _on_shutdown(app: web.Application) -> None:
    app[SIM_STATE].drop_streams()


def build_app(state: SimState) -> web.Application:
    """An application serving ``state`` (reused by ``Simulator`` across restarts)."""
    app = web.Application()
    app[SIM_STATE] = state
    app.cleanup_ctx.append(_lifecycle)
    # on_shutdown runs before aiohttp waits for handlers, so open streams end at once.
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post(UPSTREAM_PATH, chat)
    app.router.add_post(ROUTE_PATH, chat)
    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_delete("/_sim/faults", heal)
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_post("/_sim/stats/reset", reset_stats)
    app.router.add_get("/_sim/routes", get_routes)
    app.router.add_get("/_sim/healthz", healthz)
    return app


def create_simulator_app(options: SimOptions | None = None, faults: SimFaults | None = None) -> web.Application:
    """A fresh simulator application with its own state."""
    return build_app(SimState(options, faults))


class Simulator:
    """The simulator on a real socket: ``async with Simulator() as sim: ... sim.url ...``."""

    def __init__(
        self,
        options: SimOptions | None = None,
        faults: SimFaults | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.state = SimState(options, faults)
        self.host = host
        self._port = port  # 0 until the first start picks a free port; kept afterwards
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (fixed after the first start)."""
        if not self._port:
            raise RuntimeError("the simulator has not been started yet")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port``, the root of the admin API."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The chat endpoint: what the gateway uses as its upstream URL."""
        return self.base_url + UPSTREAM_PATH

    @property
    def faults(self) -> SimFaults:
        """Faults in force on the default route; assigning takes effect for the next request."""
        return self.state.faults

    @faults.setter
    def faults(self, faults: SimFaults) -> None:
        self.state.faults = faults

    @property
    def stats(self) -> SimStats:
        """Live global counters, every route included (the same object across restarts)."""
        return self.state.stats

    # Routes: ValueError subclasses for a bad name (RouteNameError) or one route too
    # many (RouteLimitError); a route's state is created healthy on first use.

    def route_url(self, name: str) -> str:
        """The chat endpoint of route ``name``; ``route_url("default")`` serves the same route as ``url``."""
        return self.base_url + route_path(name)

    def route_faults(self, name: str) -> SimFaults:
        """Faults in force on route ``name``."""
        return self.state.routes.get(name).faults

    def set_faults(self, faults: SimFaults, route: str | None = None) -> None:
        """Replace the faults of ``route`` (None: the default route); takes effect for the next request."""
        self.state.routes.get(DEFAULT_ROUTE if route is None else route).faults = faults

    def route_stats(self, name: str) -> SimStats:
        """Live counters of route ``name`` alone (the same object across restarts and resets)."""
        return self.state.routes.get(name).stats

    @property
    def options(self) -> SimOptions:
        """The options this simulator was built with."""
        return self.state.options

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again) on the port; a no-op when already running."""
        if self._runner is not None:
            return
        runner = web.AppRunner(build_app(self.state), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        if not self._port:
            self._port = int(runner.addresses[0][1])
        self._runner = runner
        logger.info("simulator listening url=%s", self.url)

    async def stop(self) -> None:
        """Close the socket and cut open streams (stalled ones too); a no-op when stopped."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        logger.info("simulator stopped port=%d", self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
