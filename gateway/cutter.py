"""``stop`` and ``max_tokens`` emulated on an answer's fragments: what may be sent, and why the answer ended.

FlowGpt knows neither, so the gateway applies them to the text as it arrives. A stop
sequence may be split across upstream fragments: the end of what has arrived that could
still begin one is held back until the next fragment decides it, so neither the stop text
nor anything after it is ever sent. The token limit is counted on the text sent, with the
same counter ``usage`` uses, so an answer cut for length never counts more than the limit.
Counting is skipped while the text's UTF-8 length says it cannot reach the limit, and an
exact count is made only when the text received has paid for it (else the text waits), so
a long run of one character (newlines, dashes) costs linear time.
When :attr:`Cutter.finish_reason` is set the caller stops reading and cancels the upstream.
No I/O here.
"""

from __future__ import annotations

from typing import Final, Literal

from gateway.tokens import RunningCount, TokenCounter

FinishReason = Literal["stop", "length"]
# Characters an exact count may cost, earned per fragment and per character received: a few
# times what arrives, so a count's cost stays linear in the answer however it is split.
COUNT_BUDGET_PER_FRAGMENT: Final = 64
COUNT_BUDGET_PER_CHAR: Final = 4


class Cutter:
    """Feed it fragments; it returns the text to send and, once it has seen enough, a finish reason."""

    __slots__ = ("_budget", "_count", "_held", "_hold", "_limit", "_over", "_sent", "_stops", "finish_reason")

    def __init__(self, *, stops: tuple[str, ...] = (), limit: int | None = None, counter: TokenCounter) -> None:
        self._stops = stops
        self._hold = max((len(stop) for stop in stops), default=1) - 1  # longest partial match to keep back
        self._limit = limit
        self._count = RunningCount(counter) if limit is not None else None
        self._held = ""
        self._over = ""  # held back until an exact count is paid for (see _within_limit)
        self._budget = 0
        self._sent: list[str] = []
        self.finish_reason: FinishReason | None = None

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return "".join(self._sent)

    def sent_tokens(self) -> int | None:
        """The exact token count of the text sent, kept while the limit was applied; None without a limit."""
        return self._count.with_text("") if self._count is not None else None

    def feed(self, fragment: str) -> str:
        """The part of ``fragment`` (with any text held back before) that may be sent now."""
        if self.finish_reason is not None:
            return ""
        pending = self._held + fragment
        self._held = ""
        if self._stops:
            cut = _first_match(pending, self._stops)
            if cut is not None:
                self.finish_reason = "stop"
                pending = pending[:cut]
            else:
                keep = _partial_tail(pending, self._stops, self._hold)
                pending, self._held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        return self._within_limit(pending, last=self.finish_reason is not None)  # a stop ends it: send all

    def end(self) -> str:
        """The upstream finished: the held-back text (it began no stop sequence after all) may be sent."""
        held, self._held = self._held, ""
        text = self._within_limit(held, last=True) if self.finish_reason is None else ""
        if self.finish_reason is None:
            self.finish_reason = "stop"
        return text

    def _within_limit(self, text: str, *, last: bool = False) -> str:
        if self._count is None or self._limit is None:
            self._sent.append(text)
            return text
        count, limit = self._count, self._limit
        # Text already held back for the limit comes first; ``last``: nothing more will come to pay for a count.
        self._budget += COUNT_BUDGET_PER_FRAGMENT + COUNT_BUDGET_PER_CHAR * len(text)  # new text only
        text, self._over = self._over + text, ""
        if not text:
            return ""
        if count.at_most(text) >= limit:
            cost = count.unsettled + len(text)
            if cost > self._budget and not last:
                # An exact count would cost more than the text received has paid for (a long piece
                # still growing): hold the text back until it has, so counting stays linear.
                self._over = text
                return ""
            self._budget -= cost
            tokens = count.with_text(text)
            if tokens >= limit:
                # What does not fit is cut. An answer at the limit ends now, not after one more
                # fragment: a stalled upstream must not turn a complete answer into a timeout.
                text = count.head(text, limit) if tokens > limit else text
                self.finish_reason = "length"
        count.append(text)
        self._sent.append(text)
        return text


def _first_match(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop sequence begins in ``text``, or None."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else None


def _partial_tail(text: str, stops: tuple[str, ...], hold: int) -> int:
    """Length of the longest end of ``text`` (at most ``hold``) that begins some stop sequence."""
    longest = 0
    for stop in stops:
        # Candidates start where the stop's first character appears near the end; the first that fits is longest.
        index = text.find(stop[0], max(0, len(text) - min(hold, len(stop) - 1)))
        while index != -1 and len(text) - index > longest:
            if stop.startswith(text[index:]):
                longest = len(text) - index
                break
            index = text.find(stop[0], index + 1)
    return longest
