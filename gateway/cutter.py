"""``stop`` and ``max_tokens`` emulated on an answer's fragments: what may be sent, and why the answer ended.

FlowGpt knows neither, so the gateway applies them to the text as it arrives. A stop
sequence may be split across upstream fragments: the end of what has arrived that could
still begin one is held back until the next fragment decides it, so neither the stop text
nor anything after it is ever sent. The token limit is counted on the text sent, with the
same counter ``usage`` uses, so an answer cut for length never counts more than the limit.
When :attr:`Cutter.finish_reason` is set the caller stops reading and cancels the upstream.
No I/O here.
"""

from __future__ import annotations

from typing import Literal

from gateway.tokens import RunningCount, TokenCounter

FinishReason = Literal["stop", "length"]


class Cutter:
    """Feed it fragments; it returns the text to send and, once it has seen enough, a finish reason."""

    __slots__ = ("_count", "_held", "_hold", "_limit", "_sent", "_stops", "finish_reason")

    def __init__(self, *, stops: tuple[str, ...] = (), limit: int | None = None, counter: TokenCounter) -> None:
        self._stops = stops
        self._hold = max((len(stop) for stop in stops), default=1) - 1  # longest partial match to keep back
        self._limit = limit
        self._count = RunningCount(counter) if limit is not None else None
        self._held = ""
        self._sent: list[str] = []
        self.finish_reason: FinishReason | None = None

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return "".join(self._sent)

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
        return self._within_limit(pending)

    def end(self) -> str:
        """The upstream finished: the held-back text (it began no stop sequence after all) may be sent."""
        held, self._held = self._held, ""
        text = self._within_limit(held) if self.finish_reason is None else ""
        if self.finish_reason is None:
            self.finish_reason = "stop"
        return text

    def _within_limit(self, text: str) -> str:
        if self._count is None or self._limit is None or not text:
            self._sent.append(text)
            return text
        if self._count.with_text(text) > self._limit:
            # What does not fit is cut; an answer exactly at the limit waits for the next fragment
            # (or the end), since a fragment can still merge into the last token.
            text = self._count.head(text, self._limit)
            self.finish_reason = "length"
        self._count.append(text)
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
