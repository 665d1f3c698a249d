"""The simulator's counters: ``SimStats`` and ``Tally``, which counts one request in several of them.

Every chat request is counted twice: in the simulator's global stats, which existing
tests and tools read, and in its route's own, so a test can tell which route saw what.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

# The integer counters of SimStats; a Literal so mypy checks every name passed to Tally.add.
Counter = Literal[
    "requests_total",
    "faulted_total",
    "garbage_lines_sent",
    "text_chunks_sent",
    "active_streams",
    "client_disconnects",
    "completed_streams",
]


@dataclass
class SimStats:
    """Counters a test or a drill can assert on; ``to_dict`` is what ``/_sim/stats`` serves."""

    requests_total: int = 0
    responses_by_status: dict[int, int] = field(default_factory=dict)
    faulted_total: int = 0
    garbage_lines_sent: int = 0
    text_chunks_sent: int = 0
    active_streams: int = 0
    client_disconnects: int = 0
    completed_streams: int = 0
    last_body: dict[str, Any] | None = None
    last_headers: dict[str, str] | None = None

    def count(self, status: int) -> None:
        """Record one chat response with ``status``."""
        self.responses_by_status[status] = self.responses_by_status.get(status, 0) + 1

    def reset(self) -> None:
        """Zero everything except ``active_streams``, which must keep matching reality."""
        fresh = SimStats(active_streams=self.active_streams)
        for item in fields(self):
            setattr(self, item.name, getattr(fresh, item.name))

    def to_dict(self) -> dict[str, Any]:
        """A deep copy as plain data (``responses_by_status`` keeps int keys)."""
        return asdict(self)


class Tally:
    """What one request counts, applied to each of the ``SimStats`` it belongs to."""

    __slots__ = ("_all",)

    def __init__(self, *stats: SimStats) -> None:
        self._all = stats

    def add(self, counter: Counter, amount: int = 1) -> None:
        """Add ``amount`` (may be negative) to ``counter``."""
        for stats in self._all:
            setattr(stats, counter, getattr(stats, counter) + amount)

    def count(self, status: int) -> None:
        """Record one chat response with ``status``."""
        for stats in self._all:
            stats.count(status)

    def received(self, headers: dict[str, str]) -> None:
        """A chat request arrived (the headers dict is shared, not copied per stats)."""
        for stats in self._all:
            stats.requests_total += 1
            stats.last_headers = headers

    def parsed(self, body: dict[str, Any]) -> None:
        """The request body parsed as a JSON object."""
        for stats in self._all:
            stats.last_body = body
