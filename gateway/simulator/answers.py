"""What a healthy simulator sends: the answer to a question, its NDJSON lines, and the content types.

Pure data and small functions (no I/O), shared by the chat handler, the faults and
the tests, so each canned byte is defined once.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Final, TypeVar

import orjson

NDJSON: Final = "application/x-ndjson"
HTML: Final = "text/html; charset=utf-8"
JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"


def expected_answer(model: str, question: str) -> str:
    """The answer the simulator streams: it echoes both, proving the request arrived intact."""
    return f"[{model}] You said: {question}"


def split_answer(answer: str, chunks: int) -> list[str]:
    """Split ``answer`` into at most ``chunks`` non-empty pieces of near-equal length."""
    return even_pieces(answer, chunks)


_Seq = TypeVar("_Seq", str, bytes)


def even_pieces(data: _Seq, chunks: int) -> list[_Seq]:
    """Split ``data`` into at most ``chunks`` non-empty pieces of near-equal length."""
    if chunks < 1:
        raise ValueError("chunks must be at least 1")
    count = min(chunks, len(data))
    if count == 0:
        return []
    size, extra = divmod(len(data), count)
    pieces: list[_Seq] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(data[start:end])
        start = end
    return pieces


def text_line(piece: str) -> bytes:
    """One NDJSON text event."""
    return b'{"event":"text","data":' + orjson.dumps(piece) + b"}\n"


@lru_cache(maxsize=128)
def answer_lines(answer: str, chunks: int) -> tuple[bytes, ...]:
    """The encoded text events for ``answer``; cached because benchmarks repeat one question."""
    return tuple(text_line(piece) for piece in split_answer(answer, chunks))


# Characters of filler per text event of a long answer: many events of a few KiB,
# like a real model's long answer, each written (and so drained) on its own.
LONG_EVENT_CHARS: Final = 8192
_FILLER: Final = (" lorem ipsum dolor sit amet," * LONG_EVENT_CHARS)[:LONG_EVENT_CHARS]
_FILLER_LINE: Final = text_line(_FILLER)


def long_answer_lines(answer: str, total_bytes: int) -> Iterator[bytes]:
    """Text events for ``answer`` followed by ASCII filler, at least ``total_bytes`` bytes of text in all.

    Made lazily, so even the largest answer costs no more memory than one event.
    """
    yield text_line(answer)
    full, rest = divmod(max(total_bytes - len(answer.encode()), 0), LONG_EVENT_CHARS)
    for _ in range(full):
        yield _FILLER_LINE
    if rest:
        yield text_line(_FILLER[:rest])


# Sent at the start of every non-empty stream: a non-text event and an object
# without "event", both of which a correct client skips.
META_LINES: Final = (
    b'{"event":"info","data":{"source":"flowgpt-simulator","stage":"start"}}\n'
    b'{"id":"sim-conversation","status":"queued"}\n'
)
