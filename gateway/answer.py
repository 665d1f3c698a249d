"""An answer in progress: the text fragments of one admitted upstream call, and how it ended.

:meth:`gateway.upstream.UpstreamService.answer` yields one once the first fragment has
arrived; the handler iterates it, and the scope reads ``completed`` and ``error`` to settle
the call with the route's breaker and metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import UpstreamError
from gateway.overhead import waiting

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.breaker import Ticket
    from gateway.cutter import Cutter
    from gateway.flowgpt.client import FlowGptStream
    from gateway.route_pool import Route


async def read_whole(stream: FlowGptStream, first: str, cutter: Cutter) -> None:
    """Feed a whole answer to ``cutter`` until it ends or the cutter has enough (non-streamed requests).

    A failure here is marked replayable: the client has seen nothing, so another attempt may answer.
    """
    cutter.feed(first)
    try:
        while cutter.finish_reason is None:
            try:
                with waiting():
                    fragment = await anext(stream)
            except StopAsyncIteration:
                cutter.end()
                return
            cutter.feed(fragment)
    except UpstreamError as exc:
        exc.replayable = True
        raise


class Answer:
    """An answer in progress: iterate it for text fragments inside its ``answer()`` scope.

    It remembers how the stream ended (``completed`` or ``error``), which the scope settles.
    """

    __slots__ = ("_first", "completed", "deadline", "error", "route", "span", "started", "stream", "ticket", "whole")

    def __init__(
        self,
        route: Route,
        ticket: Ticket,
        stream: FlowGptStream,
        first: str,
        started: float,
        deadline: float,
        whole: Cutter | None = None,
        span: Span | None = None,
    ) -> None:
        self.route = route
        self.span = span  # the attempt's trace span, ended when the answer is settled
        self.ticket = ticket
        self.started = started
        self.stream = stream
        self._first: str | None = first
        self.deadline = deadline  # a reading of the service's clock
        # A non-streamed answer arrives whole (already read into its cutter): nothing is left to iterate.
        self.whole = whole
        self.completed = whole is not None
        if whole is not None:
            self._first = None
        self.error: UpstreamError | None = None

    def __aiter__(self) -> Answer:
        return self

    async def __anext__(self) -> str:
        if self.whole is not None:
            raise StopAsyncIteration
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            with waiting():
                return await anext(self.stream)
        except StopAsyncIteration:
            self.completed = True
            raise
        except UpstreamError as exc:
            self.error = exc
            raise

    def finish_early(self) -> None:
        """The gateway has all it needs (a stop sequence, the token limit): the upstream answered well.

        Leaving the scope then cancels the rest of the upstream answer and settles it as completed.
        """
        self.completed = True

    async def read_all(self) -> str:
        """The whole answer as one string."""
        return "".join([fragment async for fragment in self])
