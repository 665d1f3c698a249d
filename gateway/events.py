"""Events between components: frozen records published on one synchronous bus.

The breaker, the working flag and the prober never call each other or the metrics;
each publishes what happened, and whoever cares subscribes (metrics, the probe
trigger, the breaker's probe-driven recovery). Handlers run synchronously in the
publisher's step, so they must do no I/O; a failing handler is logged and the others
still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]
BreakerMode = Literal["auto", "forced_open", "forced_closed"]
WorkingMode = Literal["auto", "working", "not_working"]
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    """The breaker's effective state changed; ``by_traffic`` when live calls caused it.

    ``cause``: the cause of the failure that opened it by traffic (``UpstreamError.cause``);
    ``path_cause``: the first cause since the route last worked that may be one host's path (None: every
    failure said the upstream is down). The fleet shares the trip by it when set, else by ``cause``;
    ``from_fleet``: another gateway process's trip or close, adopted here (counted apart, so a
    fleet-wide trip is not counted once per process).
    """

    breaker: str
    old: BreakerState
    new: BreakerState
    mode: BreakerMode
    by_traffic: bool
    cause: str | None = None
    path_cause: str | None = None
    from_fleet: bool = False


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe: when (Unix seconds), how long, why it failed, and the cause (``kind``, see gateway.scope)."""

    ok: bool
    at: float
    latency: float
    error: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeFinished:
    """A health probe of ``route`` completed (successfully or not); ``started`` is a monotonic clock reading.

    ``remote``: another gateway process ran it and the fleet relayed its result.
    """

    route: str
    result: ProbeResult
    started: float
    remote: bool = False


@dataclass(frozen=True, slots=True)
class WorkingChanged:
    """The effective working flag of ``route`` flipped (by probes or by an operator)."""

    route: str
    working: bool
    mode: WorkingMode


class EventBus:
    """Synchronous publish/subscribe keyed by event type."""

    def __init__(self) -> None:
        self._handlers: dict[type[Any], list[Callable[[Any], None]]] = {}

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        """Call ``handler`` with every published event of exactly ``event_type``."""
        self._handlers.setdefault(event_type, []).append(handler)

    def publish(self, event: object) -> None:
        """Deliver ``event`` to its subscribers in subscription order."""
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                log.exception("event handler failed event=%s handler=%r", type(event).__name__, handler)
