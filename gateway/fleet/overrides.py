"""Operator overrides, fleet-wide and surviving restarts.

Redis numbers the commands for each route and target (a script reads, increments and writes at
once), within an *epoch*: a random id the hash gets when it is first written, so a Redis that
restarted empty starts a new count that nobody mistakes for an old one. The order of two commands
is the order Redis received them, whatever the hosts' clocks, and every process (the sender too)
applies a command only if it is newer than the one it knows. A command given on a process cut off
from Redis is pushed when it reconnects only if nobody changed the same thing since; otherwise the
fleet's newer command stands and is applied here. A breaker command also deletes the route's trip
keys: an operator's reset leaves no open period behind for a process that starts later.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import redis.asyncio as redis

from gateway.fleet import scripts
from gateway.fleet.messages import EPOCH_FIELD, OVERRIDE_MODES, Keys, Override, OverrideTarget, stored_override

if TYPE_CHECKING:
    from gateway.fleet.link import RedisLink
    from gateway.route_pool import Route

log = logging.getLogger(__name__)

TARGETS: Final[tuple[OverrideTarget, ...]] = ("breaker", "working")
_BREAKER_MODES: Final = {"open": "force_open", "closed": "force_closed", "auto": "automatic"}


_Key = tuple[str, OverrideTarget]


@dataclass(frozen=True, slots=True)
class Known:
    """A mode and where it stands in Redis's order: ``(epoch, seq)``; seq 0: never stored."""

    mode: str
    epoch: str = ""
    seq: int = 0

    def older_than(self, epoch: str, seq: int) -> bool:
        """Whether a command numbered ``(epoch, seq)`` came after this one."""
        return epoch != self.epoch or seq > self.seq


class OverrideSharing:
    """Stores, announces and applies operator modes."""

    def __init__(self, link: RedisLink, keys: Keys, origin: str, routes: dict[str, Route]) -> None:
        self._link = link
        self._keys = keys
        self._origin = origin
        self._routes = routes
        self._pending: dict[_Key, Known] = {}  # given here, not yet stored: the mode and what it followed
        # Every mode in force here and its place in Redis's order: what Redis must hold again after a restart.
        self._known: dict[_Key, Known] = {}

    async def share(self, route: str, target: OverrideTarget, mode: str) -> bool:
        """Store and announce a mode just applied locally; False if Redis is away (pushed on reconnection)."""
        key = (route, target)
        seen = self._known.get(key, Known("auto"))
        # Pending until stored, so a re-sync running meanwhile neither undoes it here nor loses it.
        followed = self._pending.get(key, seen)
        pending = self._pending[key] = Known(mode, followed.epoch, followed.seq)
        self._known[key] = pending
        reply = await self._write(route, target, mode, None)  # also while re-syncing: the link has a client
        if reply is None:
            return False
        if self._pending.get(key) is pending:
            del self._pending[key]
        _, epoch, seq = reply
        known = self._known[key]
        if known.older_than(epoch, seq):
            self._known[key] = Known(mode, epoch, seq)
        elif Known(mode, epoch, seq).older_than(known.epoch, known.seq) and (route_obj := self._routes.get(route)):
            # Another process's command reached us while ours was in flight, and Redis ordered it after ours:
            # it is what Redis holds and what the fleet obeys, so it takes effect here too.
            self.apply(route_obj, target, known.mode)
        return True

    @staticmethod
    def apply(route: Route, target: str, mode: str) -> None:
        """Put one mode into effect on this process."""
        if target == "breaker" and mode in _BREAKER_MODES:
            getattr(route.breaker, _BREAKER_MODES[mode])()
        elif target == "working" and mode in OVERRIDE_MODES["working"]:
            route.flag.set_mode(mode)  # type: ignore[arg-type]

    def apply_message(self, message: Override) -> None:
        """An operator command from the fleet (ours too): applied if newer than the one known here."""
        route = self._routes.get(message.route)
        key = (message.route, message.target)
        if route is None or not self._known.get(key, Known("auto")).older_than(message.epoch, message.seq):
            return
        self._known[key] = Known(message.mode, message.epoch, message.seq)
        if key in self._pending:
            return  # ours is in flight: when its reply gives its place in Redis's order, share() applies the later
        self.apply(route, message.target, message.mode)

    async def resync(self) -> bool:
        """Push what was set while away (unless changed since), then adopt what is stored. False: Redis failed.

        A mode known here but absent from Redis (restarted without persistence) is written back rather
        than dropped: an operator's command is not lost because Redis was.
        """
        for key, pending in list(self._pending.items()):
            if await self._write(*key, pending.mode, pending) is None:
                return False
            if self._pending.get(key) is pending:
                del self._pending[key]  # written, or a newer command stands: read below
        stored = await self._link.call(lambda client: client.hgetall(self._keys.overrides))
        if stored is None:
            return False
        raw_epoch = stored.pop(EPOCH_FIELD.encode(), None) or stored.pop(EPOCH_FIELD, None) or b""
        epoch = raw_epoch.decode("utf-8", "replace") if isinstance(raw_epoch, bytes) else str(raw_epoch)
        modes: dict[_Key, Known] = {}
        for field, value in stored.items():
            parsed = stored_override(field, value)
            if parsed is None:
                log.warning("ignoring a malformed override field=%r", field[:100])
                continue
            route, target, mode, seq = parsed
            modes[(route, target)] = Known(mode, epoch, seq)
        for key, known in list(self._known.items()):
            if key not in modes and known.mode != "auto":
                reply = await self._write(*key, known.mode, Known(known.mode, known.epoch, -1))
                if reply is None:
                    return False
                written, epoch, seq = reply
                if written:
                    modes[key] = self._known[key] = Known(known.mode, epoch, seq)
        for name, route_obj in self._routes.items():
            for target in TARGETS:
                key = (name, target)
                stored_mode = modes.get(key, Known("auto", epoch))
                here = self._known.get(key)
                if key in self._pending or (here is not None and not here.older_than(epoch, stored_mode.seq)):
                    continue  # given here during this re-sync (newer than what was read), or already in force
                self._known[key] = stored_mode
                self.apply(route_obj, target, stored_mode.mode)
        return True

    async def _write(
        self, route: str, target: OverrideTarget, mode: str, followed: Known | None
    ) -> tuple[bool, str, int] | None:
        """(written, epoch, seq): written and announced, or not (a newer command stands); None: Redis failed.

        ``followed``: what the command followed (pushed only if that is still what is stored; seq -1:
        only if nothing is), None for a command given now.
        """
        trips = [self._keys.trip(scope) for scope in self._routes[route].scopes.all] if target == "breaker" else []
        keys = [self._keys.overrides, self._keys.channel, *trips]
        condition = ["", ""] if followed is None else [followed.seq, followed.epoch]
        args = [f"{route}:{target}", mode, self._origin, route, target, *condition, uuid.uuid4().hex]

        async def write(client: redis.Redis) -> Any:
            return await client.eval(scripts.WRITE_OVERRIDE, len(keys), *keys, *args)

        result = await self._link.call(write)
        if not isinstance(result, list) or len(result) != 3:
            return None
        epoch = result[1].decode("utf-8", "replace") if isinstance(result[1], bytes) else str(result[1])
        return bool(result[0]), epoch, int(result[2])
