"""What processes tell each other, and where it lives in Redis.

Messages are small JSON objects on one channel per prefix; keys carry what a process that
starts later (or missed a message) must still learn. Every key has a TTL except operator
overrides, which must survive restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

VERSION: Final = 1
Kind = Literal["trip", "closed", "probe", "override"]
OverrideTarget = Literal["breaker", "working"]


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout under one prefix; routes never collide across prefixes."""

    prefix: str

    @property
    def channel(self) -> str:
        """The publish/subscribe channel of every message."""
        return f"{self.prefix}:events"

    @property
    def overrides(self) -> str:
        """Hash ``<route>:<target>`` -> mode; an absent field means ``auto``. No TTL."""
        return f"{self.prefix}:overrides"

    def trip(self, route: str) -> str:
        """The current open period of ``route``: ``{trip_id, duration}``, expiring when it ends."""
        return f"{self.prefix}:route:{route}:trip"

    def trial(self, route: str, trip_id: str) -> str:
        """Who holds the half-open trial after trip ``trip_id`` (``SET NX PX``)."""
        return f"{self.prefix}:route:{route}:trial:{trip_id}"

    def probe_lease(self, route: str) -> str:
        """Which process probes ``route`` (``SET NX PX``, renewed by its holder)."""
        return f"{self.prefix}:route:{route}:probe-lease"

    def working(self, route: str) -> str:
        """The working flag after the latest probe, for processes that (re)join."""
        return f"{self.prefix}:route:{route}:working"


@dataclass(frozen=True, slots=True)
class Message:
    """One announcement; ``fields`` depend on ``kind`` (see :class:`gateway.fleet.shared.SharedHealth`)."""

    kind: Kind
    route: str
    origin: str
    fields: dict[str, Any]

    def encode(self) -> bytes:
        """The wire form."""
        return orjson.dumps(
            {"v": VERSION, "kind": self.kind, "route": self.route, "origin": self.origin, **self.fields}
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Message | None:
        """The message, or None for anything this version does not understand (never raises)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("v") != VERSION:
            return None
        kind, route, origin = data.pop("kind", None), data.pop("route", None), data.pop("origin", None)
        if kind not in ("trip", "closed", "probe", "override") or not isinstance(route, str):
            return None
        if not isinstance(origin, str):
            return None
        data.pop("v")
        return cls(kind, route, origin, data)
