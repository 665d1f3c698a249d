"""Incremental decoder for FlowGpt's newline-delimited JSON stream.

It is fed raw byte chunks split at arbitrary points and returns the text
fragments found so far. It never raises on bad input: a *bad line* is one that
is not valid UTF-8 JSON, is longer than the limit, or is a ``text`` event whose
``data`` is not a string. Bad lines are counted and reported, then skipped, so
one corrupt line costs one line and not the whole answer (the original provider
died on the first one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import orjson

BadLineCallback = Callable[[bytes, str], None]
"""Called with a truncated sample of the bad line and the reason."""

SAMPLE_BYTES: Final = 48
_NEWLINE: Final = 10  # ord("\n")


class NdjsonDecoder:
    """Turns byte chunks into text fragments; counts the lines it had to skip."""

    __slots__ = ("_buffer", "_discarding", "_max_line_bytes", "_on_bad_line", "bad_lines", "text_events")

    def __init__(self, *, max_line_bytes: int, on_bad_line: BadLineCallback | None = None) -> None:
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line, dropping bytes up to its newline
        self._max_line_bytes = max_line_bytes
        self._on_bad_line = on_bad_line
        self.bad_lines = 0
        self.text_events = 0

    def feed(self, chunk: bytes) -> list[str]:
        """Consume ``chunk`` and return the text fragments of every line it completed."""
        fragments: list[str] = []
        start = 0
        while True:
            end = chunk.find(_NEWLINE, start)
            if end < 0:
                self._keep_partial(chunk, start)
                return fragments
            if self._discarding:
                self._discarding = False
            elif self._buffer:
                self._buffer += chunk[start:end]
                self._line(bytes(self._buffer), fragments)
                self._buffer.clear()
            else:
                self._line(chunk[start:end], fragments)
            start = end + 1

    def finish(self) -> list[str]:
        """Decode a last line that had no trailing newline (the stream ended)."""
        fragments: list[str] = []
        if self._buffer and not self._discarding:
            self._line(bytes(self._buffer), fragments)
        self._buffer.clear()
        self._discarding = False
        return fragments

    def _keep_partial(self, chunk: bytes, start: int) -> None:
        if self._discarding:
            return
        self._buffer += chunk[start:]
        if len(self._buffer) > self._max_line_bytes:
            self._bad(bytes(self._buffer[:SAMPLE_BYTES]), "line too long")
            self._buffer.clear()
            self._discarding = True

    def _line(self, line: bytes, fragments: list[str]) -> None:
        if len(line) > self._max_line_bytes:
            self._bad(line[:SAMPLE_BYTES], "line too long")
            return
        if not line.strip():
            return
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._bad(line[:SAMPLE_BYTES], "invalid JSON")
            return
        if not isinstance(message, dict) or message.get("event") != "text":
            return  # other events and objects without "event" carry no answer text
        data = message.get("data")
        if not isinstance(data, str):
            self._bad(line[:SAMPLE_BYTES], "text event without string data")
            return
        self.text_events += 1
        if data:
            fragments.append(data)

    def _bad(self, sample: bytes, reason: str) -> None:
        self.bad_lines += 1
        if self._on_bad_line is not None:
            self._on_bad_line(sample, reason)
