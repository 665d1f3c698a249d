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


_Key = tuple[str, OverrideTarget]


class OverrideSharing:
    """Stores, announces and applies operator modes."""

    def __init__(self, link: RedisLink, keys: Keys, origin: str, routes: dict[str, Route]) -> None:
        self._link = link
        self._keys = keys
        self._origin = origin
        self._routes = routes
        self._pending: dict[_Key, tuple[str, int]] = {}  # given here, not yet stored
        # Every mode in force here with its time: what Redis must hold again after a restart.
        self._known: dict[_Key, tuple[str, int]] = {}

    async def share(self, route: str, target: OverrideTarget, mode: str) -> bool:
        """Store and announce a mode just applied locally; False if Redis is away (pushed on reconnection)."""
        at_ms = time.time_ns() // 1_000_000
        self._pending[(route, target)] = self._known[(route, target)] = (mode, at_ms)
        written = await self._write(route, target, mode, at_ms)  # also while re-syncing: the link has a client
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
            self._known[(message.route, message.target)] = (message.mode, message.at_ms)
            self.apply(route, message.target, message.mode)

    async def resync(self) -> bool:
        """Push what was set while away, then adopt what is stored. False: Redis failed.

        A mode known here but absent from Redis (restarted without persistence) is written
        back with its original time rather than dropped: an operator's command is not lost
        because Redis was. A later command stored meanwhile wins over both.
        """
        for _ in range(10):  # a command given during this loop is pushed by the next round
            if not self._pending:
                break
            for (route, target), (mode, at_ms) in list(self._pending.items()):
                if await self._write(route, target, mode, at_ms) is None:
                    return False
                self._pending.pop((route, target), None)
        stored = await self._link.call(lambda client: client.hgetall(self._keys.overrides))
        if stored is None:
            return False
        modes: dict[tuple[str, OverrideTarget], tuple[str, int]] = {}
        for field, value in stored.items():
            parsed = stored_override(field, value)
            if parsed is None:
                log.warning("ignoring a malformed override field=%r", field[:100])
                continue
            route, target, mode, at_ms = parsed
            modes[(route, target)] = (mode, at_ms)
        for key, (mode, at_ms) in list(self._known.items()):
            if key not in modes and mode != "auto":
                if await self._write(*key, mode, at_ms) is None:
                    return False
                modes[key] = (mode, at_ms)
        for name, route_obj in self._routes.items():
            for target in TARGETS:
                key = (name, target)
                mode, at_ms = modes.get(key, ("auto", 0))
                if key in self._pending or self._known.get(key, ("auto", -1))[1] > at_ms:
                    continue  # given here during this re-sync: newer than what was read
                if key in modes:
                    self._known[key] = (mode, at_ms)
                self.apply(route_obj, target, mode)
        return True

    async def _write(self, route: str, target: OverrideTarget, mode: str, at_ms: int) -> bool | None:
        """True: written and announced; False: a later command is stored; None: Redis failed."""
        message = encode(Override(route, self._origin, target, mode, at_ms))
        value = orjson.dumps({"mode": mode, "at_ms": at_ms})
        keys = [self._keys.overrides, self._keys.channel]

        async def write(client: redis.Redis) -> Any:
            return await client.eval(
                scripts.WRITE_OVERRIDE_IF_NEWER, 2, *keys, f"{route}:{target}", value, at_ms, message
            )

        result = await self._link.call(write)
        return None if result is None else bool(result)
