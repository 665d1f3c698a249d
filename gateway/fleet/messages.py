"""What processes tell each other, and where it lives in Redis: one place that writes and checks it.

Messages are small JSON objects on one channel per prefix. Redis delivers a channel's
messages to every subscriber in the same order, so arrival order is the fleet's order
(no wall clock decides anything between processes). Keys carry what a process that
starts later (or missed a message) must still learn; every key has a TTL except operator
overrides, which must survive restarts (and are ordered by a Redis-side sequence number).

Trips, closes, probe results and their keys carry a *scope* (:mod:`gateway.fleet.scope`): a
process applies them only to a route of the same scope.

Everything read from Redis or a peer is checked before use: a malformed message or
stored value is dropped (``None``), never raised into the loop that reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

import orjson

from gateway.events import ProbeResult

VERSION: Final = 1
OverrideTarget = Literal["breaker", "working"]
OVERRIDE_MODES: Final[dict[str, tuple[str, ...]]] = {
    "breaker": ("open", "closed", "auto"),
    "working": ("working", "not_working", "auto"),
}
_MAX_ID = 200
EPOCH_FIELD: Final = "_epoch"  # the overrides hash's epoch (see gateway.fleet.overrides), not a route
_MAX_ERROR = 500


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
        """Hash ``<route>:<target>`` -> ``{"mode", "seq"}``. No TTL."""
        return f"{self.prefix}:overrides"

    def trip(self, scope: str) -> str:
        """The open period shared in ``scope``: ``{trip_id, duration, trial_ms}``, expiring after its trial window."""
        return f"{self.prefix}:trip:{scope}"

    def probe_lease(self, scope: str) -> str:
        """Which process probes the routes of ``scope`` (taken and renewed by script)."""
        return f"{self.prefix}:probe-lease:{scope}"

    def working(self, scope: str) -> str:
        """The working flag after the latest probe shared in ``scope``, for processes that (re)join."""
        return f"{self.prefix}:working:{scope}"


@dataclass(frozen=True, slots=True)
class Trip:
    """A breaker opened by live traffic; ``open_for`` is what is left of its period."""

    route: str
    origin: str
    scope: str
    trip_id: str
    open_for: float
    duration: float
    from_closed: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """A trial after trip ``trip_id`` succeeded."""

    route: str
    origin: str
    scope: str
    trip_id: str


@dataclass(frozen=True, slots=True)
class Probe:
    """The probe lease holder's result; it started ``started_ago`` seconds before it was sent."""

    route: str
    origin: str
    scope: str
    result: ProbeResult
    started_ago: float


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's mode for one target of one route."""

    route: str
    origin: str
    target: OverrideTarget
    mode: str
    seq: int  # Redis's order of the commands for this field: the later one wins, whatever the clocks
    epoch: str  # the count the seq belongs to (a Redis restarted empty starts a new one)


Message = Trip | Closed | Probe | Override


@dataclass(frozen=True, slots=True)
class StoredWorking:
    """The working flag as the lease holder left it after its latest probe."""

    working: bool
    failures: int
    successes: int
    last_probe: ProbeResult


def encode(message: Message) -> bytes:
    """The wire form."""
    head = {"v": VERSION, "route": message.route, "origin": message.origin}
    if isinstance(message, Trip):
        body: dict[str, Any] = {
            "kind": "trip",
            "scope": message.scope,
            "trip_id": message.trip_id,
            "open_for": message.open_for,
            "duration": message.duration,
            "from_closed": message.from_closed,
        }
    elif isinstance(message, Closed):
        body = {"kind": "closed", "scope": message.scope, "trip_id": message.trip_id}
    elif isinstance(message, Probe):
        body = {
            "kind": "probe",
            "scope": message.scope,
            **probe_fields(message.result),
            "started_ago": message.started_ago,
        }
    else:
        body = {
            "kind": "override",
            "target": message.target,
            "mode": message.mode,
            "seq": message.seq,
            "epoch": message.epoch,
        }
    return orjson.dumps({**head, **body})


def decode(raw: bytes | str) -> Message | None:
    """The message, or None for anything malformed or of another version."""
    data = _object(raw)
    if data is None or data.get("v") != VERSION:
        return None
    route, origin, kind, scope = data.get("route"), data.get("origin"), data.get("kind"), data.get("scope")
    if not (_short_str(route) and _short_str(origin)):
        return None
    if kind == "override":
        target, mode, seq, epoch = data.get("target"), data.get("mode"), data.get("seq"), data.get("epoch")
        if _target(target) and mode in OVERRIDE_MODES[target] and _count(seq) and _short_str(epoch):
            return Override(route, origin, target, str(mode), seq, epoch)
        return None
    if not _short_str(scope):
        return None
    if kind == "trip":
        trip_id, open_for, duration = data.get("trip_id"), data.get("open_for"), data.get("duration")
        if _short_str(trip_id) and _positive(open_for) and _positive(duration):
            from_closed = data.get("from_closed") is True
            return Trip(route, origin, scope, trip_id, float(open_for), float(duration), from_closed)
    elif kind == "closed":
        trip_id = data.get("trip_id")
        if _short_str(trip_id):
            return Closed(route, origin, scope, trip_id)
    elif kind == "probe":
        result, started_ago = parse_probe(data), data.get("started_ago")
        if result is not None and _non_negative(started_ago):
            return Probe(route, origin, scope, result, float(started_ago))
    return None


def stored_trip(raw: bytes | None) -> tuple[str, float, int] | None:
    """``(trip_id, duration, trial_ms)`` from a trip key's value (its TTL covers the period, then the trial)."""
    data = _object(raw) if raw is not None else None
    if data is None:
        return None
    trip_id, duration, trial_ms = data.get("trip_id"), data.get("duration"), data.get("trial_ms", 0)
    if not _short_str(trip_id) or not _positive(duration) or not _count(trial_ms):
        return None
    return trip_id, float(duration), trial_ms


def stored_working(raw: bytes | None) -> StoredWorking | None:
    """The working flag from a working key's value."""
    data = _object(raw) if raw is not None else None
    if data is None:
        return None
    working, failures, successes = data.get("working"), data.get("failures"), data.get("successes")
    probe = data.get("probe")
    result = parse_probe(probe) if isinstance(probe, dict) else None
    if not isinstance(working, bool) or result is None:
        return None
    if not (_count(failures) and _count(successes)):
        return None
    return StoredWorking(working, failures, successes, result)


def stored_override(field: bytes | str, value: bytes | str) -> tuple[str, OverrideTarget, str, int] | None:
    """``(route, target, mode, seq)`` from one field of the overrides hash."""
    try:
        name = field.decode() if isinstance(field, bytes) else field
    except UnicodeDecodeError:
        return None
    route, _, target = name.rpartition(":")
    data = _object(value)
    if data is None or not _short_str(route):
        return None
    mode, seq = data.get("mode"), data.get("seq")
    if not (_target(target) and mode in OVERRIDE_MODES[target] and _count(seq)):
        return None
    return route, target, str(mode), seq


def probe_fields(result: ProbeResult) -> dict[str, Any]:
    """A probe result as JSON fields."""
    fields = {"ok": result.ok, "at": result.at, "latency": result.latency, "error": result.error}
    return {**fields, "error_kind": result.kind}


def parse_probe(data: dict[str, Any]) -> ProbeResult | None:
    """A probe result from JSON fields, or None."""
    ok, at, latency, error = data.get("ok"), data.get("at"), data.get("latency"), data.get("error")
    kind = data.get("error_kind")
    if not isinstance(ok, bool) or not _non_negative(at) or not _non_negative(latency):
        return None
    if (error is not None and not isinstance(error, str)) or (kind is not None and not _short_str(kind)):
        return None
    error = None if error is None else error[:_MAX_ERROR]
    return ProbeResult(ok=ok, at=float(at), latency=float(latency), error=error, kind=kind)


def _target(value: object) -> TypeGuard[OverrideTarget]:
    return value in ("breaker", "working")


def _object(raw: bytes | str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _short_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID


def _number(value: object) -> TypeGuard[int | float]:
    # bool is an int subclass; JSON true is not a number here
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: object) -> TypeGuard[int | float]:
    return _number(value) and value > 0


def _non_negative(value: object) -> TypeGuard[int | float]:
    return _number(value) and value >= 0


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
