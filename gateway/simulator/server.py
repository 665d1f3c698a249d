"""Assembling the simulator application, its admin API, and running it on a socket.

``Simulator`` keeps one ``SimState`` and builds a fresh application on every start,
so it can stop (clients get "connection refused") and start again on the same port
with its faults and stats intact.
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
from gateway.simulator.app import SIM_STATE, SimState, SimStats, chat
from gateway.simulator.faults import SimFaults, SimOptions, describe_error

logger = logging.getLogger(__name__)

# A backstop only: on_shutdown already ends every stream, so handlers finish at once.
_SHUTDOWN_TIMEOUT: Final = 0.5


async def get_faults(request: web.Request) -> web.Response:
    """GET /_sim/faults: the faults now in force."""
    return web.json_response(request.app[SIM_STATE].faults.model_dump())


async def set_faults(request: web.Request) -> web.Response:
    """POST /_sim/faults: replace all faults (unset fields go back to healthy)."""
    state = request.app[SIM_STATE]
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"message": "body is not valid JSON"}, status=400)
    try:
        faults = SimFaults.model_validate(payload)
    except ValidationError as exc:
        field, message = describe_error(exc)
        return web.json_response({"message": message, "field": field}, status=400)
    state.faults = faults
    logger.info("faults set: %s", faults.model_dump(exclude_defaults=True))
    return web.json_response(faults.model_dump())


async def heal(request: web.Request) -> web.Response:
    """DELETE /_sim/faults: back to a healthy upstream."""
    state = request.app[SIM_STATE]
    state.faults = SimFaults()
    logger.info("faults cleared")
    return web.json_response(state.faults.model_dump())


async def get_stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: the counters."""
    return web.json_response(request.app[SIM_STATE].stats.to_dict())


async def reset_stats(request: web.Request) -> web.Response:
    """POST /_sim/stats/reset: zero the counters (active_streams stays truthful)."""
    stats = request.app[SIM_STATE].stats
    stats.reset()
    return web.json_response(stats.to_dict())


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
    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_delete("/_sim/faults", heal)
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_post("/_sim/stats/reset", reset_stats)
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
        """Faults in force; assigning takes effect for the next request."""
        return self.state.faults

    @faults.setter
    def faults(self, faults: SimFaults) -> None:
        self.state.faults = faults

    @property
    def stats(self) -> SimStats:
        """Live counters (the same object across restarts)."""
        return self.state.stats

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
