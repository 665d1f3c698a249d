"""Assembling the simulator application (chat endpoint and control API) and running it on a socket.

``Simulator`` keeps one ``SimState`` and builds a fresh application on every start,
so it can stop (clients get "connection refused") and start again on the same port
with its faults, stats and routes intact.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final, Self

from aiohttp import web

from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator import admin
from gateway.simulator.chat import chat
from gateway.simulator.faults import SimFaults
from gateway.simulator.options import SimOptions
from gateway.simulator.routes import DEFAULT_ROUTE, ROUTE_PATH, route_path
from gateway.simulator.state import SIM_STATE, SimState
from gateway.simulator.stats import SimStats

logger = logging.getLogger(__name__)

# A backstop only: on_shutdown already ends every stream, so handlers finish at once.
_SHUTDOWN_TIMEOUT: Final = 0.5


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
    app.router.add_get("/_sim/faults", admin.get_faults)
    app.router.add_post("/_sim/faults", admin.set_faults)
    app.router.add_delete("/_sim/faults", admin.heal)
    app.router.add_get("/_sim/stats", admin.get_stats)
    app.router.add_post("/_sim/stats/reset", admin.reset_stats)
    app.router.add_get("/_sim/routes", admin.get_routes)
    app.router.add_get("/_sim/healthz", admin.healthz)
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
