"""Operator overrides, fleet-wide and surviving restarts.

Redis numbers the commands for each route and target (a script reads, increments and writes at
once), so the order of two commands is the order Redis received them, whatever the hosts' clocks.
A command given on a process cut off from Redis is pushed when it reconnects only if nobody changed
the same thing since (the number it last saw is still the stored one); otherwise the fleet's newer
command stands and is applied here. A breaker command also deletes the route's trip keys: an
operator's reset leaves no open period behind for a process that starts later.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import redis.asyncio as redis

from gateway.fleet import scripts
from gateway.fleet.messages import OVERRIDE_MODES, Keys, Override, OverrideTarget, stored_override

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
        self._pending: dict[_Key, tuple[str, int]] = {}  # given here while cut off: mode, the seq it followed
        # Every mode in force here with the seq Redis gave it: what Redis must hold again after a restart.
        self._known: dict[_Key, tuple[str, int]] = {}

    async def share(self, route: str, target: OverrideTarget, mode: str) -> bool:
        """Store and announce a mode just applied locally; False if Redis is away (pushed on reconnection)."""
        key = (route, target)
        seen = self._known.get(key, ("auto", 0))[1]
        # Pending until stored, so a re-sync running meanwhile neither undoes it here nor loses it.
        pending = self._pending[key] = (mode, self._pending.get(key, (mode, seen))[1])
        self._known[key] = (mode, seen)
        reply = await self._write(route, target, mode, None)  # also while re-syncing: the link has a client
        if reply is None:
            return False
        if self._pending.get(key) is pending:
            del self._pending[key]
            self._known[key] = (mode, reply[1])
        return True

    @staticmethod
    def apply(route: Route, target: str, mode: str) -> None:
        """Put one mode into effect on this process."""
        if target == "breaker" and mode in _BREAKER_MODES:
            getattr(route.breaker, _BREAKER_MODES[mode])()
        elif target == "working" and mode in OVERRIDE_MODES["working"]:
            route.flag.set_mode(mode)  # type: ignore[arg-type]

    def apply_message(self, message: Override) -> None:
        """Another process's operator command (messages arrive in Redis's order: the latest wins)."""
        route = self._routes.get(message.route)
        if route is not None:
            self._known[(message.route, message.target)] = (message.mode, message.seq)
            self._pending.pop((message.route, message.target), None)
            self.apply(route, message.target, message.mode)

    async def resync(self) -> bool:
        """Push what was set while away (unless changed since), then adopt what is stored. False: Redis failed.

        A mode known here but absent from Redis (restarted without persistence) is written back rather
        than dropped: an operator's command is not lost because Redis was.
        """
        for (route, target), (mode, seen) in list(self._pending.items()):
            if await self._write(route, target, mode, seen) is None:
                return False
            self._pending.pop((route, target), None)  # written, or a newer command stands: read below
        stored = await self._link.call(lambda client: client.hgetall(self._keys.overrides))
        if stored is None:
            return False
        modes: dict[_Key, tuple[str, int]] = {}
        for field, value in stored.items():
            parsed = stored_override(field, value)
            if parsed is None:
                log.warning("ignoring a malformed override field=%r", field[:100])
                continue
            route, target, mode, seq = parsed
            modes[(route, target)] = (mode, seq)
        for key, (mode, _) in list(self._known.items()):
            if key not in modes and mode != "auto":
                reply = await self._write(*key, mode, 0)
                if reply is None:
                    return False
                if reply[0]:
                    modes[key] = self._known[key] = (mode, reply[1])
        for name, route_obj in self._routes.items():
            for target in TARGETS:
                key = (name, target)
                mode, seq = modes.get(key, ("auto", 0))
                if key in self._pending or self._known.get(key, ("auto", -1))[1] > seq:
                    continue  # given here during this re-sync: newer than what was read (or pushed next time)
                self._known[key] = (mode, seq)
                self.apply(route_obj, target, mode)
        return True

    async def _write(self, route: str, target: OverrideTarget, mode: str, seen: int | None) -> tuple[bool, int] | None:
        """(written, seq): written and announced, or not (a newer command is stored); None: Redis failed.

        ``seen``: the seq this command followed (pushed only if still stored), None for a command given now.
        """
        trips = [self._keys.trip(scope) for scope in self._routes[route].scopes.all] if target == "breaker" else []
        keys = [self._keys.overrides, self._keys.channel, *trips]
        args = [f"{route}:{target}", mode, self._origin, route, target, "" if seen is None else seen]

        async def write(client: redis.Redis) -> Any:
            return await client.eval(scripts.WRITE_OVERRIDE, len(keys), *keys, *args)

        result = await self._link.call(write)
        if not isinstance(result, list) or len(result) != 2:
            return None
        return bool(result[0]), int(result[1])
