"""What one process knows of one route's fleet state, and the open period it is in.

Kept apart from the parts that read and change it (trips, probes), so none of them imports another.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.probe_lease import ProbeLease
from gateway.route_pool import Route


@dataclass(frozen=True, slots=True)
class Period:
    """The open period a process is in: its id, the scope it is shared in (None: not shared), who began it."""

    trip_id: str
    scope: str | None
    origin: str
    shared: bool  # known to the fleet (published, or learnt from it)


@dataclass(eq=False)
class RouteShare:
    """What this process knows of one route's fleet state."""

    route: Route
    period: Period | None = None  # the open period this process is in (ours or the fleet's), if any
    unpublished_close: Period | None = None  # a close of ours not yet published: retried on re-sync
    sit_out_until: float = 0.0  # the probe lease is left to peers until then (our path failed)
    trip_publish: asyncio.Task[Any] | None = None  # our latest trip's publish, which its close must follow

    @property
    def lease(self) -> ProbeLease:
        """The route's probe lease, which its prober reads."""
        return self.route.lease
