"""Whether this process runs a route's next probe: the fleet keeps the facts, the prober asks.

Alone (no fleet, or its link down) a process probes its own routes. In a fleet one process holds
each route scope's probe lease (:mod:`gateway.fleet.probes`) and the others skip their ticks, unless
no result arrived for two intervals and a renewal period (the holder may be stuck, or its path blocked
and its results kept). The factory makes one :class:`LinkState` and one :class:`ProbeLease` per route
and hands them to both the prober and the fleet, so neither is wired into the other after construction.
"""

from __future__ import annotations

from collections.abc import Callable


def renew_period(probe_interval: float) -> float:
    """How often a lease is taken or renewed (a third of the probe interval; its TTL is two of these)."""
    return max(probe_interval / 3, 0.05)


class LinkState:
    """Whether the fleet's decisions are shared right now; written by the fleet's Redis link only."""

    __slots__ = ("up",)

    def __init__(self) -> None:
        self.up = False  # no fleet, or not (yet) connected and synced: every process decides alone


class ProbeLease:
    """One route's probe lease as this process knows it, and the one question the prober asks of it."""

    __slots__ = ("_clock", "_held", "_last_result_at", "_link", "_stale_after")

    def __init__(self, link: LinkState, *, probe_interval: float, clock: Callable[[], float]) -> None:
        self._link = link
        self._clock = clock
        self._stale_after = 2 * probe_interval + renew_period(probe_interval)
        self._held = False
        self._last_result_at = 0.0

    @property
    def held(self) -> bool:
        """This process holds the route scope's lease (as of its last renewal)."""
        return self._held

    def hold(self, held: bool) -> None:
        """The fleet took, renewed, lost or gave back the lease."""
        self._held = held

    def result_arrived(self) -> None:
        """A probe result (ours or a peer's) was applied here; a joiner also starts its wait with this."""
        self._last_result_at = self._clock()

    @property
    def results_stale(self) -> bool:
        """No probe result (ours or a peer's) for two intervals and a renewal period."""
        return self._clock() - self._last_result_at > self._stale_after

    def may_probe(self) -> bool:
        """Probe when holding the lease, when there is no fleet to rely on, or when results went stale."""
        return not self._link.up or self._held or self.results_stale
