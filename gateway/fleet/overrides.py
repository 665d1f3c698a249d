"""Operator overrides, fleet-wide and surviving restarts.

Each override is stored with the wall-clock time the operator gave it; a write that finds
a later one stored is dropped (a script compares and writes at once). So an override made
on a process cut off from Redis is pushed when it reconnects, unless an operator changed
the same thing since: the later command wins, as the operators who gave both would expect.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis.asyncio as redis

from gateway.fleet import scripts
from gateway.fleet.messages import OVERRIDE_MODES, Keys, Override, OverrideTarget, encode, stored_override

if TYPE_CHECKING:
    from gateway.fleet.link import RedisLink
    from gateway.route_pool import Route

log = logging.getLogger(__name__)

TARGETS: Final[tuple[OverrideTarget, ...]] = ("breaker", "working")
_BREAKER_MODES: Final = {"open": "force_open", "closed": "force_closed", "auto": "automatic"}


class OverrideSharing:
    """Stores, announces and applies operator modes."""

    def __init__(self, link: RedisLink, keys: Keys, origin: str, routes: dict[str, Route]) -> None:
        self._link = link
        self._keys = keys
        self._origin = origin
        self._routes = routes
        self._pending: dict[tuple[str, OverrideTarget], tuple[str, int]] = {}

    async def share(self, route: str, target: OverrideTarget, mode: str) -> bool:
        """Store and announce a mode just applied locally; False if Redis is away (pushed on reconnection)."""
        at_ms = time.time_ns() // 1_000_000
        self._pending[(route, target)] = (mode, at_ms)
        if not self._link.up:
            return False
        written = await self._write(route, target, mode, at_ms)
        if written is not None:
            self._pending.pop((route, target), None)
        return written is True  # False too when a later command (by another clock) is stored

    @staticmethod
    def apply(route: Route, target: str, mode: str) -> None:
        """Put one mode into effect on this process."""
        if target == "breaker" and mode in _BREAKER_MODES:
            getattr(route.breaker, _BREAKER_MODES[mode])()
        elif target == "working" and mode in OVERRIDE_MODES["working"]:
            route.flag.set_mode(mode)  # type: ignore[arg-type]

    def apply_message(self, message: Override) -> None:
        """Another process's operator command."""
        route = self._routes.get(message.route)
        if route is not None:
            self.apply(route, message.target, message.mode)

    async def resync(self) -> bool:
        """Push what was set while away (unless superseded), then adopt every stored mode. False: Redis failed."""
        for (route, target), (mode, at_ms) in list(self._pending.items()):
            if await self._write(route, target, mode, at_ms) is None:
                return False
            self._pending.pop((route, target), None)
        stored = await self._link.call(lambda client: client.hgetall(self._keys.overrides))
        if stored is None:
            return False
        modes: dict[tuple[str, OverrideTarget], str] = {}
        for field, value in stored.items():
            parsed = stored_override(field, value)
            if parsed is None:
                log.warning("ignoring a malformed override field=%r", field[:100])
                continue
            route, target, mode, _ = parsed
            modes[(route, target)] = mode
        for name, route_obj in self._routes.items():
            for target in TARGETS:
                self.apply(route_obj, target, modes.get((name, target), "auto"))
        return True

    async def _write(self, route: str, target: OverrideTarget, mode: str, at_ms: int) -> bool | None:
        """True: written and announced; False: a later command is stored; None: Redis failed."""
        message = encode(Override(route, self._origin, target, mode))
        value = orjson.dumps({"mode": mode, "at_ms": at_ms})
        keys = [self._keys.overrides, self._keys.channel]

        async def write(client: redis.Redis) -> Any:
            return await client.eval(
                scripts.WRITE_OVERRIDE_IF_NEWER, 2, *keys, f"{route}:{target}", value, at_ms, message
            )

        result = await self._link.call(write)
        return None if result is None else bool(result)
