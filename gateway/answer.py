"""An answer in progress: the text fragments of one admitted upstream call, and how it ended.

:meth:`gateway.upstream.UpstreamService.answer` yields one once the first fragment has
arrived; the handler reads it batch by batch, and the scope reads ``completed`` and ``error`` to settle
the call with the route's breaker and metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import UpstreamError

if TYPE_CHECKING:
    from gateway.attempt import Attempt
    from gateway.cutter import Cutter
    from gateway.flowgpt.client import FlowGptStream
    from gateway.route_pool import Route


async def read_whole(stream: FlowGptStream, first: str, cutter: Cutter) -> None:
    """Feed a whole answer to ``cutter`` until it ends or the cutter has enough (non-streamed requests).

    A failure here is marked replayable: the client has seen nothing (``classify`` reads the mark).
    """
    cutter.feed(first)
    try:
        while cutter.finish_reason is None:
            # What one network read brought (a whole short answer, often) is fed without an await each.
            fragments = await stream.next_fragments()
            if not fragments:
                cutter.end()
                return
            for fragment in fragments:
                cutter.feed(fragment)
                if cutter.finish_reason is not None:
                    return
    except UpstreamError as exc:
        exc.replayable = True
        raise


class Answer:
    """An answer in progress: read its text fragments with :meth:`next_fragments` inside its ``answer()`` scope.

    It remembers how the stream ended (``completed`` or ``error``), which the scope settles.
    """

    __slots__ = ("_first", "attempt", "completed", "deadline", "error", "stream", "whole")

    def __init__(
        self, attempt: Attempt, stream: FlowGptStream, first: str, deadline: float, whole: Cutter | None = None
    ) -> None:
        self.attempt = attempt  # the upstream call this answer comes from, settled when the scope ends
        self.stream = stream
        self._first: str | None = first
        self.deadline = deadline  # a reading of the service's clock
        # A non-streamed answer arrives whole (already read into its cutter): nothing is left to iterate.
        self.whole = whole
        self.completed = whole is not None
        if whole is not None:
            self._first = None
        self.error: UpstreamError | None = None

    @property
    def route(self) -> Route:
        return self.attempt.route

    async def next_fragments(self) -> list[str]:
        """The fragments one upstream read brought (the first fragment leads the first batch); [] at the end.

        A stream handler writes each batch at once: what arrived together leaves together.
        """
        if self.whole is not None:
            return []
        if self._first is not None:
            first, self._first = self._first, None
            return [first, *self.stream.take_buffered()]
        try:
            fragments = await self.stream.next_fragments()
        except UpstreamError as exc:
            self.error = exc
            raise
        if not fragments:
            self.completed = True
        return fragments

    @property
    def drained(self) -> bool:
        """The next :meth:`next_fragments` ends the answer without waiting (all of it has arrived)."""
        return self._first is None and self.stream.drained

    def finish_early(self) -> None:
        """The gateway has all it needs (a stop sequence, the token limit): the upstream answered well.

        Leaving the scope then cancels the rest of the upstream answer and settles it as completed.
        """
        self.completed = True
