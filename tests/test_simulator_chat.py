"""gateway/simulator/chat.py and answers.py: the chat endpoint's answer stream and how its faults shape it.

A healthy request gets the canned answer as NDJSON text events (answers.py has two
tests of its own, so it shares this file); the chat handler shapes the stream with
a slow first token, a stall, a reset, garbage lines, a long answer or an error body
sent in pieces, and counts a client that leaves, over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, signed_headers
from gateway.simulator import CLOUDFLARE_PAGE, SimFaults, SimOptions, Simulator, split_answer
from gateway.simulator.answers import LONG_EVENT_CHARS
from gateway.simulator.faults import MAX_ANSWER_BYTES
from monitoring.processes import eventually
from tests.simulator_support import ANSWER, MODEL, QUESTION, chat_body, parse, post_chat, stop_cuts, text_of

# --- healthy behaviour -------------------------------------------------------------


async def test_healthy_stream_carries_expected_answer_and_meta_events(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """A signed valid request gets the whole expected answer as NDJSON text events plus meta lines."""
    status, content_type, raw = await post_chat(session, sim)
    objects, garbage = parse(raw)
    assert (status, content_type, garbage) == (200, "application/x-ndjson", [])
    assert text_of(objects) == ANSWER
    assert any(o.get("event") not in (None, "text") for o in objects)
    assert any("event" not in o for o in objects)
    assert sum(o.get("event") == "text" for o in objects) == 8
    stats = sim.stats
    assert (stats.completed_streams, stats.text_chunks_sent, stats.active_streams) == (1, 8, 0)
    assert stats.responses_by_status == {200: 1}
    assert stats.last_body is not None
    assert stats.last_body["question"] == QUESTION
    assert stats.last_headers is not None
    assert stats.last_headers["Authorization"] == "Bearer null"


async def test_paced_stream_respects_chunk_delay(session: aiohttp.ClientSession) -> None:
    """With chunk_delay the answer is still complete and takes at least (chunks - 1) delays."""
    async with Simulator(SimOptions(chunks=5, chunk_delay=0.02, meta_events=False)) as sim:
        started = time.monotonic()
        _, _, raw = await post_chat(session, sim)
        elapsed = time.monotonic() - started
    objects, _ = parse(raw)
    assert text_of(objects) == ANSWER
    assert all(o.get("event") == "text" for o in objects)
    assert elapsed >= 4 * 0.02


@pytest.mark.parametrize(("answer", "chunks"), [("abcdefghij", 3), ("ab", 8), ("x" * 100, 8), ("abc", 1)])
def test_split_answer_is_lossless(answer: str, chunks: int) -> None:
    """split_answer gives at most ``chunks`` non-empty pieces that join back to the answer."""
    pieces = split_answer(answer, chunks)
    assert "".join(pieces) == answer
    assert all(pieces)
    assert len(pieces) == min(chunks, len(answer))


def test_expected_answer_echoes_model_and_question() -> None:
    """The canned answer proves which model and question arrived."""
    assert MODEL in ANSWER
    assert QUESTION in ANSWER


# --- stream faults -----------------------------------------------------------------


async def read_lines(resp: aiohttp.ClientResponse, into: list[bytes]) -> None:
    """Collect body lines into ``into`` until the body ends (or fails, keeping what arrived)."""
    async for line in resp.content:
        into.append(line)


async def test_slow_first_token_sends_headers_then_waits(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """slow_first_token delays the first line, not the response headers."""
    sim.faults = SimFaults(slow_first_token=0.25)
    started = time.monotonic()
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        headers_at = time.monotonic()
        await resp.content.readline()
        first_line_at = time.monotonic()
        rest = await resp.read()
    assert first_line_at - started >= 0.25
    assert first_line_at - headers_at >= 0.1
    assert rest


async def test_stall_after_hangs_until_client_leaves(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """stall_after sends N chunks then hangs; the client times out and its leaving is counted."""
    sim.faults = SimFaults(stall_after=2)
    lines: list[bytes] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=0.2)
    async with session.post(
        sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN), timeout=timeout
    ) as resp:
        with pytest.raises(TimeoutError):
            await read_lines(resp, lines)
        assert sim.stats.active_streams == 1
    objects, _ = parse(b"".join(lines))
    assert sum(o.get("event") == "text" for o in objects) == 2
    await eventually(lambda: sim.stats.client_disconnects == 1)
    assert (sim.stats.active_streams, sim.stats.completed_streams) == (0, 0)


async def test_client_leaving_a_paced_stream_is_counted(session: aiohttp.ClientSession) -> None:
    """A client that closes mid-stream counts as a disconnect, not a completed stream."""
    async with Simulator(SimOptions(chunk_delay=0.05)) as sim:
        async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
            await resp.content.readline()
        await eventually(lambda: sim.stats.client_disconnects == 1)
        assert (sim.stats.active_streams, sim.stats.completed_streams) == (0, 0)


async def test_reset_after_breaks_the_body(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """reset_after sends N chunks then drops the connection: the client gets ClientPayloadError."""
    sim.faults = SimFaults(reset_after=3)
    lines: list[bytes] = []
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_lines(resp, lines)
    objects, _ = parse(b"".join(lines))
    assert sum(o.get("event") == "text" for o in objects) == 3
    assert sim.stats.completed_streams == 0


async def test_garbage_ratio_one_puts_garbage_before_every_chunk(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """garbage_ratio=1 adds one non-JSON line per text chunk and leaves the answer whole."""
    sim.faults = SimFaults(garbage_ratio=1)
    _, _, raw = await post_chat(session, sim)
    objects, garbage = parse(raw)
    assert text_of(objects) == ANSWER
    assert len(garbage) == 8
    assert all(line.strip() for line in garbage)
    assert sim.stats.garbage_lines_sent == 8


async def test_answer_bytes_streams_a_long_answer_in_many_events(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """answer_bytes streams the expected answer then filler, at least that many bytes of text in KiB-sized events."""
    sim.faults = SimFaults(answer_bytes=300_000, garbage_ratio=1)
    status, _, raw = await post_chat(session, sim)
    objects, garbage = parse(raw)
    texts = [o["data"] for o in objects if o.get("event") == "text"]
    text = "".join(texts)
    assert status == 200
    assert text.startswith(ANSWER)
    assert 300_000 <= len(text.encode()) < 300_000 + len(ANSWER)
    assert len(texts) == len(garbage) == sim.stats.text_chunks_sent > 300_000 // LONG_EVENT_CHARS
    assert max(len(t) for t in texts) <= LONG_EVENT_CHARS
    assert sim.stats.completed_streams == 1


async def test_answer_bytes_blocks_on_a_slow_reader_and_ends_when_it_leaves(session: aiohttp.ClientSession) -> None:
    """A reader that stops leaves the long stream waiting on drain; when it disconnects the handler ends at once."""
    async with Simulator(SimOptions(meta_events=False), SimFaults(answer_bytes=MAX_ANSWER_BYTES)) as sim:
        async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
            assert ANSWER in json.loads(await resp.content.readline())["data"]
            sent = -1
            for _ in range(30):  # until the socket buffers are full and the writes stop
                await asyncio.sleep(0.1)
                if sim.stats.text_chunks_sent == sent:
                    break
                sent = sim.stats.text_chunks_sent
            assert sim.stats.text_chunks_sent == sent < MAX_ANSWER_BYTES // LONG_EVENT_CHARS
            assert (sim.stats.active_streams, sim.stats.completed_streams) == (1, 0)
        await eventually(lambda: sim.stats.client_disconnects == 1)
        assert (sim.stats.active_streams, sim.stats.completed_streams) == (0, 0)


async def test_error_body_chunks_keeps_cloudflare_markers_out_of_the_first_read(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """With error_body_chunks=2 the first read of the Cloudflare page is the doctype alone; the rest follows later."""
    sim.faults = SimFaults(http_status=403, http_body="cloudflare", error_body_chunks=2, error_chunk_delay=0.2)
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        assert resp.status == 403
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "Content-Length" not in resp.headers
        first = await resp.content.readany()
        rest = await resp.read()
    assert first == b"<!DOCTYPE html>\n"
    assert b"Just a moment" not in first
    assert b"cf-please-wait" not in first
    assert (first + rest).decode() == CLOUDFLARE_PAGE
    assert sim.stats.responses_by_status == {403: 1}


async def test_error_body_chunks_sends_json_error_in_separate_pieces(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """A JSON error body goes out in error_body_chunks pieces, each a separate read, with Retry-After kept."""
    sim.faults = SimFaults(http_status=429, retry_after=1, error_body_chunks=3, error_chunk_delay=0.1)
    pieces: list[bytes] = []
    started = time.monotonic()
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, "1")
        while piece := await resp.content.readany():
            pieces.append(piece)
    assert time.monotonic() - started >= 0.2
    assert len(pieces) == 3
    assert json.loads(b"".join(pieces)) == {"error": {"message": "simulated upstream error 429"}}


async def test_stop_cuts_a_chunked_error_body(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Stopping mid error body aborts it, so the client never mistakes a prefix for the whole page."""
    sim.faults = SimFaults(http_status=403, http_body="cloudflare", error_body_chunks=2, error_chunk_delay=5)
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        await resp.content.readany()
        await stop_cuts(sim, resp)
