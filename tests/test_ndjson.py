"""The NDJSON decoder: tolerant of bad lines, split chunks and over-long lines."""

from __future__ import annotations

import pytest

from gateway.flowgpt.ndjson import NdjsonDecoder


def decode(chunks: list[bytes], limit: int = 1024) -> tuple[list[str], int, list[str]]:
    """Feed ``chunks``; return (fragments, bad line count, reasons)."""
    reasons: list[str] = []
    decoder = NdjsonDecoder(max_line_bytes=limit, on_bad_line=lambda sample, reason: reasons.append(reason))
    fragments: list[str] = []
    for chunk in chunks:
        fragments += decoder.feed(chunk)
    fragments += decoder.finish()
    return fragments, decoder.bad_lines, reasons


def test_text_events_in_order() -> None:
    """Text events yield their data in order; other events and objects are skipped silently."""
    raw = b'{"event":"start"}\n{"event":"text","data":"Hel"}\n{"x":1}\n\n{"event":"text","data":"lo"}\n'
    assert decode([raw]) == (["Hel", "lo"], 0, [])


def test_bad_lines_are_counted_and_skipped() -> None:
    """Garbage, invalid UTF-8 and text events without string data count as bad lines; the rest survives."""
    raw = b'{"event":"text","data":"a"}\nnot json\n\xff\xfe\n{"event":"text","data":5}\n{"event":"text","data":"b"}\n'
    fragments, bad, reasons = decode([raw])
    assert fragments == ["a", "b"]
    assert bad == 3
    assert reasons == ["invalid JSON", "invalid JSON", "text event without string data"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_result(size: int) -> None:
    """Splitting the byte stream at arbitrary points does not change the outcome."""
    raw = b'{"event":"text","data":"caf\xc3\xa9 "}\n{oops\n{"event":"text","data":"ok"}'
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    assert decode(chunks) == (["café ", "ok"], 1, ["invalid JSON"])


def test_last_line_without_newline_is_decoded() -> None:
    """A final line with no trailing newline still counts when the stream ends."""
    assert decode([b'{"event":"text","data":"end"}'])[0] == ["end"]


def test_over_long_line_is_one_bad_line_even_across_chunks() -> None:
    """A line over the limit is dropped as one bad line, without buffering it whole."""
    long_line = b'{"event":"text","data":"' + b"x" * 5000 + b'"}\n'
    chunks = [long_line[i : i + 100] for i in range(0, len(long_line), 100)] + [b'{"event":"text","data":"ok"}\n']
    assert decode(chunks, limit=1024) == (["ok"], 1, ["line too long"])
