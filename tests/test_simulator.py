"""The FlowGpt simulator, exercised over real loopback sockets."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError
from pytest_aiohttp import AiohttpClient

from gateway.flowgpt.protocol import (
    ANONYMOUS_TOKEN,
    UPSTREAM_PATH,
    Message,
    build_body,
    signed_headers,
)
from gateway.simulator import (
    CLOUDFLARE_PAGE,
    RouteLimitError,
    RouteNameError,
    SimFaults,
    SimOptions,
    SimStats,
    Simulator,
    create_simulator_app,
    expected_answer,
    split_answer,
)
from gateway.simulator.answers import LONG_EVENT_CHARS
from gateway.simulator.cli import add_arguments, options_from_args, run
from gateway.simulator.faults import MAX_ANSWER_BYTES, split_error_body
from monitoring.processes import eventually

MODEL = "gpt-4-turbo"
QUESTION = "What is the capital of France?"
ANSWER = expected_answer(MODEL, QUESTION)


def chat_body(question: str = QUESTION) -> dict[str, Any]:
    """A valid FlowGpt request body."""
    return build_body(MODEL, [Message("system", "Be brief."), Message("user", question)])


def parse(raw: bytes) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Split an NDJSON body into JSON objects and garbage (non-JSON) lines."""
    objects: list[dict[str, Any]] = []
    garbage: list[bytes] = []
    for line in raw.splitlines():
        try:
            objects.append(json.loads(line))
        except ValueError:
            garbage.append(line)
    return objects, garbage


def text_of(objects: list[dict[str, Any]]) -> str:
    """The answer text carried by the text events."""
    return "".join(o["data"] for o in objects if o.get("event") == "text")


async def read_lines(resp: aiohttp.ClientResponse, into: list[bytes]) -> None:
    """Collect body lines into ``into`` until the body ends (or fails, keeping what arrived)."""
    async for line in resp.content:
        into.append(line)


@pytest.fixture(name="sim")
async def fixture_sim() -> AsyncIterator[Simulator]:
    """A healthy simulator on a free loopback port."""
    async with Simulator(SimOptions(seed=1)) as sim:
        yield sim


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without keep-alive, so restarts never meet a stale pooled socket."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post_chat(
    session: aiohttp.ClientSession,
    sim: Simulator,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    url: str | None = None,
) -> tuple[int, str, bytes]:
    """POST one signed chat request (to ``sim.url`` unless ``url`` is given) and return status, content type and body."""
    async with session.post(
        sim.url if url is None else url,
        json=chat_body() if body is None else body,
        headers=signed_headers(ANONYMOUS_TOKEN) if headers is None else headers,
    ) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


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


async def test_app_factory_works_with_pytest_aiohttp(aiohttp_client: AiohttpClient) -> None:
    """create_simulator_app serves the protocol (on the plain and the route paths) under pytest-aiohttp's test client too."""
    client = await aiohttp_client(create_simulator_app(SimOptions(chunks=2)))
    for path in (UPSTREAM_PATH, "/r/backup" + UPSTREAM_PATH):
        resp = await client.post(path, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN))
        objects, _ = parse(await resp.read())
        assert text_of(objects) == ANSWER


# --- request checks ----------------------------------------------------------------


def _bad_signature() -> dict[str, str]:
    headers = signed_headers(ANONYMOUS_TOKEN)
    headers["x-signature"] = "0" * 32
    return headers


def _missing(name: str) -> Callable[[], dict[str, str]]:
    def build() -> dict[str, str]:
        headers = signed_headers(ANONYMOUS_TOKEN)
        del headers[name]
        return headers

    return build


@pytest.mark.parametrize(
    ("make_headers", "reason"),
    [
        (_bad_signature, "invalid signature"),
        (lambda: signed_headers("some-other-token"), "invalid token"),
        (lambda: signed_headers(ANONYMOUS_TOKEN, now=time.time() - 1000), "stale x-timestamp"),
        (_missing("x-nonce"), "missing header x-nonce"),
        (_missing("x-signature"), "missing header x-signature"),
        (_missing("x-timestamp"), "missing header x-timestamp"),
        (_missing("x-flow-device-id"), "missing header x-flow-device-id"),
        (_missing("Authorization"), "missing header Authorization"),
    ],
)
async def test_bad_signing_is_401(
    sim: Simulator,
    session: aiohttp.ClientSession,
    make_headers: Callable[[], dict[str, str]],
    reason: str,
) -> None:
    """Missing, wrong or stale signing headers get 401 with a message saying what is wrong."""
    status, _, raw = await post_chat(session, sim, headers=make_headers())
    assert status == 401
    assert reason in json.loads(raw)["message"]
    assert sim.stats.responses_by_status == {401: 1}


async def test_signature_check_can_be_disabled(session: aiohttp.ClientSession) -> None:
    """With check_signature=False an unsigned request is answered."""
    async with Simulator(SimOptions(check_signature=False)) as sim:
        status, _, raw = await post_chat(session, sim, headers={"X-Nothing": "1"})
    assert status == 200
    assert text_of(parse(raw)[0]) == ANSWER


async def test_custom_token_is_required(session: aiohttp.ClientSession) -> None:
    """A simulator with a real token accepts only that bearer token."""
    async with Simulator(SimOptions(token="s3cret")) as sim:
        assert (await post_chat(session, sim))[0] == 401
        assert (await post_chat(session, sim, headers=signed_headers("s3cret")))[0] == 200


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("model", "gpt-9", "model"),
        ("question", "", "question"),
        ("question", 5, "question"),
        ("history", "none", "history"),
        ("history", [{"role": "system", "content": "x"}], "history.0.role"),
        ("history", [{"role": "user"}], "history.0.content"),
        ("system", None, "system"),
        ("temperature", 2.5, "temperature"),
        ("temperature", "0.7", "temperature"),
        ("promptId", "model-gpt-3.5-turbo", "promptId"),
        ("nsfw", 0, "nsfw"),
        ("generateImage", "false", "generateImage"),
        ("generateAudio", None, "generateAudio"),
        ("documentIds", {}, "documentIds"),
        ("chatFileDocumentIds", "x", "chatFileDocumentIds"),
    ],
)
async def test_invalid_body_field_is_400_naming_it(
    sim: Simulator, session: aiohttp.ClientSession, field: str, value: Any, named: str
) -> None:
    """A body field with a wrong type or value gets 400 whose message names the field."""
    body = chat_body() | {field: value}
    status, _, raw = await post_chat(session, sim, body=body)
    assert status == 400
    error = json.loads(raw)
    assert f"'{named}'" in error["message"]
    assert error["field"] == named


async def test_missing_body_field_is_400(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """A body without a protocol field gets 400 naming it."""
    body = chat_body()
    del body["chatFileDocumentIds"]
    status, _, raw = await post_chat(session, sim, body=body)
    assert status == 400
    assert "'chatFileDocumentIds'" in json.loads(raw)["message"]


@pytest.mark.parametrize(("payload", "reason"), [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object")])
async def test_malformed_body_is_400(
    sim: Simulator, session: aiohttp.ClientSession, payload: bytes, reason: str
) -> None:
    """A body that is not a JSON object gets 400."""
    async with session.post(sim.url, data=payload, headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        assert resp.status == 400
        assert reason in (await resp.json())["message"]


# --- faults ------------------------------------------------------------------------


async def test_http_status_fault_sends_json_error(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """http_status answers with that status and a JSON error body by default."""
    sim.faults = SimFaults(http_status=503)
    status, content_type, raw = await post_chat(session, sim)
    assert (status, content_type) == (503, "application/json")
    assert json.loads(raw) == {"error": {"message": "simulated upstream error 503"}}
    assert sim.stats.faulted_total == 1


async def test_cloudflare_body_is_a_challenge_page(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """http_body='cloudflare' sends the Cloudflare challenge page as HTML."""
    sim.faults = SimFaults(http_status=403, http_body="cloudflare")
    status, content_type, raw = await post_chat(session, sim)
    assert status == 403
    assert content_type.startswith("text/html")
    assert raw.decode() == CLOUDFLARE_PAGE
    assert "<title>Just a moment...</title>" in CLOUDFLARE_PAGE
    assert '<div id="cf-please-wait">' in CLOUDFLARE_PAGE


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<html><body>bad gateway</body></html>", "text/html"),
        ("upstream gone", "text/plain"),
        ('{"message": "busy"}', "application/json"),
    ],
)
async def test_custom_error_body_gets_matching_content_type(
    sim: Simulator, session: aiohttp.ClientSession, body: str, content_type: str
) -> None:
    """A custom http_body is sent verbatim with a content type that fits it."""
    sim.faults = SimFaults(http_status=502, http_body=body)
    status, got_type, raw = await post_chat(session, sim)
    assert (status, raw.decode()) == (502, body)
    assert got_type.startswith(content_type)


async def test_retry_after_is_whole_seconds_rounded_up(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """retry_after travels as a Retry-After header in whole seconds, rounded up."""
    sim.faults = SimFaults(http_status=429, retry_after=1.2)
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"


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


async def test_html_200_is_an_html_page(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """html_200 answers 200 with an HTML page instead of NDJSON."""
    sim.faults = SimFaults(html_200=True)
    status, content_type, raw = await post_chat(session, sim)
    assert status == 200
    assert content_type.startswith("text/html")
    assert raw.lstrip().startswith(b"<!DOCTYPE html>")


async def test_empty_stream_has_no_lines(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """empty_stream answers 200 NDJSON with an empty body."""
    sim.faults = SimFaults(empty_stream=True)
    assert await post_chat(session, sim) == (200, "application/x-ndjson", b"")


async def post_raw(session: aiohttp.ClientSession, sim: Simulator, raw: bytes) -> tuple[int, bytes]:
    """POST exactly ``raw`` as a signed chat request; the rejection faults measure these bytes."""
    headers = signed_headers(ANONYMOUS_TOKEN) | {"Content-Type": "application/json"}
    async with session.post(sim.url, data=raw, headers=headers) as resp:
        return resp.status, await resp.read()


def encoded(question: str = QUESTION) -> bytes:
    """A valid request body as bytes."""
    return json.dumps(chat_body(question)).encode()


async def test_reject_over_bytes_is_413_only_above_the_limit(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """reject_over_bytes serves a body of exactly the limit and answers 413 to one byte more."""
    at_limit, over = encoded(), encoded(QUESTION + "!")
    sim.faults = SimFaults(reject_over_bytes=len(at_limit))
    status, raw = await post_raw(session, sim, at_limit)
    assert (status, text_of(parse(raw)[0])) == (200, ANSWER)
    status, raw = await post_raw(session, sim, over)
    assert status == 413
    message = f"request body too large ({len(over)} bytes > limit {len(at_limit)})"
    assert json.loads(raw) == {"error": {"message": message}}
    assert sim.stats.responses_by_status == {200: 1, 413: 1}
    assert sim.stats.faulted_total == 1


async def test_reject_marker_rejects_only_bodies_containing_it(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """reject_marker answers reject_status with a JSON error to bodies holding the marker, and serves the rest."""
    sim.faults = SimFaults(reject_marker="FORBIDDEN-WORD", reject_status=422)
    status, content_type, raw = await post_chat(session, sim, body=chat_body("say FORBIDDEN-WORD please"))
    assert (status, content_type) == (422, "application/json")
    assert "FORBIDDEN-WORD" in json.loads(raw)["error"]["message"]
    status, _, raw = await post_chat(session, sim)
    assert (status, text_of(parse(raw)[0])) == (200, ANSWER)
    assert sim.stats.responses_by_status == {422: 1, 200: 1}
    assert sim.stats.faulted_total == 1


async def test_reject_marker_can_name_a_model(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """A model name as the marker rejects that model's requests with the default 400 and serves other models."""
    sim.faults = SimFaults(reject_marker=MODEL)
    assert (await post_chat(session, sim))[0] == 400
    other = build_body("claude-v2", [Message("user", QUESTION)])
    status, _, raw = await post_chat(session, sim, body=other)
    assert (status, text_of(parse(raw)[0])) == (200, expected_answer("claude-v2", QUESTION))


async def test_rejections_come_first_and_other_faults_apply_to_the_rest(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """A rejection beats http_status; reject_over_bytes beats reject_marker; unrejected requests get the other faults."""
    sim.faults = SimFaults(reject_marker="FORBIDDEN", http_status=503)
    assert (await post_chat(session, sim, body=chat_body("FORBIDDEN")))[0] == 400
    assert (await post_chat(session, sim))[0] == 503
    sim.faults = SimFaults(reject_marker="FORBIDDEN", reject_over_bytes=10)
    assert (await post_chat(session, sim, body=chat_body("FORBIDDEN")))[0] == 413
    assert sim.stats.faulted_total == 3


async def test_rejections_skip_the_ratio_draw_and_use_up_count(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """ratio never spares a matching body; count=1 heals everything after the first rejection."""
    sim.faults = SimFaults(reject_marker="FORBIDDEN", ratio=0, count=1)
    assert (await post_chat(session, sim))[0] == 200
    assert sim.stats.faulted_total == 0
    assert (await post_chat(session, sim, body=chat_body("FORBIDDEN")))[0] == 400
    assert sim.faults == SimFaults()
    assert (await post_chat(session, sim, body=chat_body("FORBIDDEN")))[0] == 200
    assert sim.stats.faulted_total == 1


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
        started = time.monotonic()
        await sim.stop()
        assert time.monotonic() - started < 0.5
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


@pytest.mark.parametrize("chunks", [2, 3, 5])
def test_split_error_body_sends_the_first_line_alone(chunks: int) -> None:
    """The first piece of a multi-line body is its first line; the pieces join back to the body."""
    body = CLOUDFLARE_PAGE.encode()
    pieces = split_error_body(body, chunks)
    assert (len(pieces), pieces[0], b"".join(pieces)) == (chunks, b"<!DOCTYPE html>\n", body)
    assert body.index(b"<title>") >= len(pieces[0])


@pytest.mark.parametrize(
    ("body", "expected"), [(b"abcdef", [b"abc", b"def"]), (b"abc\n", [b"ab", b"c\n"]), (b"a", [b"a"])]
)
def test_split_error_body_without_inner_line_break_splits_evenly(body: bytes, expected: list[bytes]) -> None:
    """A one-line body is cut into near-equal pieces (never more pieces than bytes)."""
    assert split_error_body(body, 2) == expected


async def _statuses_with_ratio(session: aiohttp.ClientSession, seed: int, count: int) -> list[int]:
    async with Simulator(SimOptions(seed=seed, chunks=1), SimFaults(http_status=500, ratio=0.3)) as sim:
        statuses = [(await post_chat(session, sim))[0] for _ in range(count)]
        assert sim.stats.faulted_total == statuses.count(500)
        return statuses


async def test_ratio_faults_a_seeded_share_of_requests(session: aiohttp.ClientSession) -> None:
    """ratio=0.3 faults about 30% of requests, and the same seed faults the same ones."""
    first = await _statuses_with_ratio(session, seed=42, count=200)
    assert 40 <= first.count(500) <= 80
    assert set(first) == {200, 500}
    assert await _statuses_with_ratio(session, seed=42, count=200) == first


async def test_ratio_zero_never_faults(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """ratio=0 keeps every request healthy even with faults set."""
    sim.faults = SimFaults(http_status=500, ratio=0)
    assert [(await post_chat(session, sim))[0] for _ in range(5)] == [200] * 5
    assert sim.stats.faulted_total == 0


def test_fault_model_validates() -> None:
    """SimFaults rejects out-of-range values and unknown fields; the default is healthy."""
    assert SimFaults() == SimFaults()
    assert not SimFaults().active
    assert not SimFaults(ratio=0.5).active
    assert SimFaults(stall_after=0).active
    assert SimFaults(reject_marker="x").active
    assert SimFaults(reject_over_bytes=1).active
    assert SimFaults(answer_bytes=1).active
    assert not SimFaults(reject_status=403).active
    assert not SimFaults(reject_marker="x").shapes_responses
    with pytest.raises(ValidationError):
        SimFaults(http_status=99)
    with pytest.raises(ValidationError):
        SimFaults(garbage_ratio=1.5)
    with pytest.raises(ValidationError):
        SimFaults(retry_after=float("inf"))
    with pytest.raises(ValidationError):
        SimFaults.model_validate({"bogus": 1})
    for bad in (
        {"reject_over_bytes": 0},
        {"reject_marker": ""},
        {"reject_status": 500},
        {"reject_status": 399},
        {"answer_bytes": 0},
        {"answer_bytes": MAX_ANSWER_BYTES + 1},
        {"error_body_chunks": 1},
        {"error_chunk_delay": -1},
    ):
        with pytest.raises(ValidationError):
            SimFaults.model_validate(bad)
    with pytest.raises(ValidationError):
        SimOptions(chunks=0)
    with pytest.raises(ValidationError):
        SimOptions(max_routes=0)


# --- admin API ---------------------------------------------------------------------


async def test_admin_faults_roundtrip(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Faults can be read, replaced (taking effect at once) and healed over HTTP."""
    faults_url = sim.base_url + "/_sim/faults"
    async with session.get(faults_url) as resp:
        assert await resp.json() == SimFaults().model_dump()
    async with session.post(faults_url, json={"http_status": 502, "retry_after": 3}) as resp:
        assert resp.status == 200
        assert (await resp.json())["http_status"] == 502
    assert sim.faults == SimFaults(http_status=502, retry_after=3)
    assert (await post_chat(session, sim))[0] == 502
    async with session.delete(faults_url) as resp:
        assert await resp.json() == SimFaults().model_dump()
    assert (await post_chat(session, sim))[0] == 200


@pytest.mark.parametrize(
    ("payload", "named"),
    [({"garbage_ratio": 2}, "garbage_ratio"), ({"http_status": "teapot"}, "http_status"), ({"stall": 1}, "stall")],
)
async def test_admin_rejects_bad_fault_field(
    sim: Simulator, session: aiohttp.ClientSession, payload: dict[str, Any], named: str
) -> None:
    """A bad fault value or unknown field gets 400 naming it and leaves the faults unchanged."""
    sim.faults = SimFaults(empty_stream=True)
    async with session.post(sim.base_url + "/_sim/faults", json=payload) as resp:
        assert resp.status == 400
        assert f"'{named}'" in (await resp.json())["message"]
    assert sim.faults == SimFaults(empty_stream=True)


async def test_admin_stats_and_reset(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Stats are served as JSON and can be reset; healthz answers whatever the faults."""
    await post_chat(session, sim)
    async with session.get(sim.base_url + "/_sim/stats") as resp:
        stats = await resp.json()
    assert (stats["requests_total"], stats["responses_by_status"]) == (1, {"200": 1})
    assert stats["last_body"]["question"] == QUESTION
    async with session.post(sim.base_url + "/_sim/stats/reset") as resp:
        assert (await resp.json())["requests_total"] == 0
    assert sim.stats.requests_total == 0
    sim.faults = SimFaults(http_status=500)
    async with session.get(sim.base_url + "/_sim/healthz") as resp:
        assert await resp.json() == {"status": "ok", "faults_active": True}


# --- routes ------------------------------------------------------------------------


async def get_json(session: aiohttp.ClientSession, url: str, route: str | None = None) -> tuple[int, Any]:
    """GET an admin URL (with ``?route=`` when given) and return status and JSON."""
    params = None if route is None else {"route": route}
    async with session.get(url, params=params) as resp:
        return resp.status, await resp.json()


async def test_routes_answer_with_their_own_faults_at_the_same_time(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """While one route's stream hangs, another answers 503 and a third and the default stream healthy answers."""
    sim.set_faults(SimFaults(stall_after=1), route="stuck")
    sim.set_faults(SimFaults(http_status=503), route="down")
    timeout = aiohttp.ClientTimeout(total=None, sock_read=5)
    async with session.post(
        sim.route_url("stuck"), json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN), timeout=timeout
    ) as stuck:
        for _ in range(3):  # two meta lines and the one text chunk
            await stuck.content.readline()
        await eventually(lambda: sim.route_stats("stuck").active_streams == 1)
        down, up, default = await asyncio.gather(
            post_chat(session, sim, url=sim.route_url("down")),
            post_chat(session, sim, url=sim.route_url("up")),
            post_chat(session, sim),
        )
        assert down[0] == 503
        assert json.loads(down[2]) == {"error": {"message": "simulated upstream error 503"}}
        for status, _, raw in (up, default):
            assert (status, text_of(parse(raw)[0])) == (200, ANSWER)
        assert sim.stats.active_streams == 1
    await eventually(lambda: sim.route_stats("stuck").client_disconnects == 1)
    assert (sim.faults, sim.route_faults("up")) == (SimFaults(), SimFaults())


async def test_route_stats_are_per_route_and_global_stats_count_all(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """Each route counts only its own requests; the global stats (sim.stats, /_sim/stats) count every one."""
    sim.set_faults(SimFaults(http_status=503), route="a")
    for _ in range(2):
        await post_chat(session, sim, url=sim.route_url("a"))
    await post_chat(session, sim, url=sim.route_url("b"), body=chat_body("from b"))
    await post_chat(session, sim)
    a, b, default = sim.route_stats("a"), sim.route_stats("b"), sim.route_stats("default")
    assert (a.requests_total, a.responses_by_status, a.faulted_total, a.completed_streams) == (2, {503: 2}, 2, 0)
    assert (b.requests_total, b.responses_by_status, b.faulted_total, b.completed_streams) == (1, {200: 1}, 0, 1)
    assert (b.text_chunks_sent, default.requests_total, default.responses_by_status) == (8, 1, {200: 1})
    assert b.last_body is not None
    assert b.last_body["question"] == "from b"
    total = sim.stats
    assert (total.requests_total, total.responses_by_status, total.faulted_total) == (4, {503: 2, 200: 2}, 2)
    assert (total.completed_streams, total.text_chunks_sent) == (2, 16)
    stats_url = sim.base_url + "/_sim/stats"
    assert await get_json(session, stats_url, "a") == (200, a.to_dict() | {"responses_by_status": {"503": 2}})
    status, served = await get_json(session, stats_url)
    assert (status, served["requests_total"], served["responses_by_status"]) == (200, 4, {"503": 2, "200": 2})
    async with session.post(sim.base_url + "/_sim/stats/reset") as resp:
        assert (await resp.json())["requests_total"] == 0
    assert total.requests_total == a.requests_total == b.requests_total == default.requests_total == 0
    assert sim.route_stats("a") is a  # still the live object
    assert sim.route_faults("a") == SimFaults(http_status=503)  # reset touches counters only
    status, served = await get_json(session, stats_url, "never-used")
    assert (status, served) == (200, SimStats().to_dict())


async def test_admin_faults_per_route(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """?route= reads, replaces and heals one route's faults; without it the default route's, as before."""
    faults_url = sim.base_url + "/_sim/faults"
    async with session.post(faults_url, params={"route": "a"}, json={"http_status": 502}) as resp:
        assert (resp.status, (await resp.json())["http_status"]) == (200, 502)
    assert await get_json(session, faults_url, "a") == (200, SimFaults(http_status=502).model_dump())
    assert await get_json(session, faults_url) == (200, SimFaults().model_dump())
    assert await get_json(session, faults_url, "b") == (200, SimFaults().model_dump())
    assert sim.route_faults("a") == SimFaults(http_status=502)
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 502
    assert (await post_chat(session, sim, url=sim.route_url("b")))[0] == 200
    assert (await post_chat(session, sim))[0] == 200
    async with session.post(faults_url, json={"http_status": 500}) as resp:  # no route: the default one
        assert resp.status == 200
    assert (sim.faults, sim.route_faults("a")) == (SimFaults(http_status=500), SimFaults(http_status=502))
    async with session.post(faults_url, params={"route": "a"}, json={"garbage_ratio": 2}) as resp:
        assert resp.status == 400
        assert (await resp.json())["field"] == "garbage_ratio"
    assert sim.route_faults("a") == SimFaults(http_status=502)
    async with session.delete(faults_url, params={"route": "a"}) as resp:
        assert await resp.json() == SimFaults().model_dump()
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 200
    assert sim.faults == SimFaults(http_status=500)
    status, listing = await get_json(session, sim.base_url + "/_sim/routes")
    assert (status, listing["max_routes"]) == (200, 64)
    assert listing["routes"]["default"] == {
        "path": "/r/default" + UPSTREAM_PATH,
        "faults": {"http_status": 500},
        "requests_total": 1,
    }
    assert set(listing["routes"]) == {"default", "a", "b"}


async def test_default_route_is_the_plain_path(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """sim.url, route_url('default'), sim.faults, set_faults(route=None) and ?route=default are one route."""
    assert sim.url == sim.base_url + UPSTREAM_PATH
    assert sim.route_url("default") == sim.base_url + "/r/default" + UPSTREAM_PATH
    assert sim.route_url("eu-1") == sim.base_url + "/r/eu-1" + UPSTREAM_PATH
    sim.set_faults(SimFaults(http_status=503))
    assert sim.faults == sim.route_faults("default") == SimFaults(http_status=503)
    assert (await post_chat(session, sim))[0] == 503
    assert (await post_chat(session, sim, url=sim.route_url("default")))[0] == 503
    assert (await post_chat(session, sim, url=sim.route_url("other")))[0] == 200
    faults_url = sim.base_url + "/_sim/faults"
    assert await get_json(session, faults_url) == await get_json(session, faults_url, "default")
    assert sim.route_stats("default").responses_by_status == {503: 2}
    assert sim.stats.responses_by_status == {503: 2, 200: 1}


async def test_count_heals_each_route_on_its_own(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """count is kept per route: a route heals after its own faulted requests, leaving the others' faults set."""
    sim.faults = SimFaults(http_status=502, count=1)
    sim.set_faults(SimFaults(http_status=503, count=2), route="a")
    sim.set_faults(SimFaults(http_status=500, count=1), route="b")
    url_a, url_b = sim.route_url("a"), sim.route_url("b")
    statuses = [(await post_chat(session, sim, url=url))[0] for url in (url_b, url_a, url_b, url_a, url_a)]
    assert statuses == [500, 503, 200, 503, 200]
    assert sim.route_faults("a") == sim.route_faults("b") == SimFaults()
    assert sim.faults == SimFaults(http_status=502, count=1)
    assert [(await post_chat(session, sim))[0] for _ in range(2)] == [502, 200]
    faulted = [sim.route_stats(name).faulted_total for name in ("a", "b", "default")]
    assert (faulted, sim.stats.faulted_total) == ([2, 1, 1], 4)


async def test_route_count_is_bounded(session: aiohttp.ClientSession) -> None:
    """Past max_routes (default included) a new route gets a JSON 404 over HTTP and RouteLimitError in Python."""
    async with Simulator(SimOptions(max_routes=3)) as sim:
        assert (await post_chat(session, sim, url=sim.route_url("r1")))[0] == 200
        sim.set_faults(SimFaults(http_status=503), route="r2")
        status, content_type, raw = await post_chat(session, sim, url=sim.route_url("r3"))
        assert (status, content_type.split(";")[0]) == (404, "application/json")
        assert json.loads(raw) == {"message": "unknown route 'r3': the simulator serves at most 3 routes"}
        async with session.post(sim.base_url + "/_sim/faults", params={"route": "r3"}, json={}) as resp:
            assert resp.status == 404
            assert "at most 3 routes" in (await resp.json())["message"]
        assert (await get_json(session, sim.base_url + "/_sim/stats", "r4"))[0] == 404
        with pytest.raises(RouteLimitError):
            sim.set_faults(SimFaults(), route="r5")
        with pytest.raises(RouteLimitError):
            sim.route_stats("r6")
        # The routes already in use keep working; the refused requests count globally only.
        assert (await post_chat(session, sim, url=sim.route_url("r1")))[0] == 200
        assert (await post_chat(session, sim, url=sim.route_url("r2")))[0] == 503
        assert (await post_chat(session, sim))[0] == 200
        assert sim.stats.responses_by_status == {200: 3, 404: 1, 503: 1}
        assert len(sim.state.routes) == 3


async def test_default_bound_is_64_routes(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """The default simulator serves 63 named routes besides the default one, and refuses the 64th name."""
    statuses = [(await post_chat(session, sim, url=sim.route_url(f"r{index}")))[0] for index in range(64)]
    assert statuses == [200] * 63 + [404]
    assert (await post_chat(session, sim, url=sim.route_url("r0")))[0] == 200


@pytest.mark.parametrize("name", ["Upper", "x" * 33, "dot.dot", "a b", "ümlaut", ""])
async def test_invalid_route_name_is_400(sim: Simulator, session: aiohttp.ClientSession, name: str) -> None:
    """A name outside [a-z0-9_-]{1,32} gets a JSON 400 naming the field, from the chat path and the admin API alike."""
    admin = [
        session.get(sim.base_url + "/_sim/faults", params={"route": name}),
        session.post(sim.base_url + "/_sim/faults", params={"route": name}, json={"http_status": 500}),
        session.delete(sim.base_url + "/_sim/faults", params={"route": name}),
        session.get(sim.base_url + "/_sim/stats", params={"route": name}),
    ]
    if name:  # an empty name is not a path the chat endpoint matches at all
        headers = signed_headers(ANONYMOUS_TOKEN)
        admin.append(session.post(f"{sim.base_url}/r/{name}{UPSTREAM_PATH}", json=chat_body(), headers=headers))
    for pending in admin:
        async with pending as resp:
            assert resp.status == 400
            error = await resp.json()
        assert error["field"] == "route"
        assert error["message"].startswith("invalid route name")
    with pytest.raises(RouteNameError):
        sim.route_url(name)
    with pytest.raises(RouteNameError):
        sim.set_faults(SimFaults(), route=name)
    assert len(sim.state.routes) == 1
    assert sim.faults == SimFaults()


async def test_route_keeps_the_request_contract(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """A route checks signatures and bodies like the default path, and counts the rejections as its own."""
    url = sim.route_url("a")
    assert (await post_chat(session, sim, url=url, headers=_bad_signature()))[0] == 401
    assert (await post_chat(session, sim, url=url, body=chat_body() | {"temperature": "0.7"}))[0] == 400
    assert sim.route_stats("a").responses_by_status == {401: 1, 400: 1}
    assert sim.route_stats("default").requests_total == 0


async def _route_statuses(session: aiohttp.ClientSession, *, interleave: bool) -> list[int]:
    faults = SimFaults(http_status=500, ratio=0.5)
    async with Simulator(SimOptions(seed=7, chunks=1)) as sim:
        sim.set_faults(faults, route="a")
        sim.set_faults(faults, route="b")
        statuses = []
        for _ in range(30):
            if interleave:
                await post_chat(session, sim, url=sim.route_url("b"))
            statuses.append((await post_chat(session, sim, url=sim.route_url("a")))[0])
        return statuses


async def test_seeded_route_draws_ignore_other_routes_traffic(session: aiohttp.ClientSession) -> None:
    """Each route draws ratio from its own seeded RNG: the same requests fault whatever other routes get."""
    alone = await _route_statuses(session, interleave=False)
    assert set(alone) == {200, 500}
    assert await _route_statuses(session, interleave=True) == alone


async def test_routes_survive_a_restart(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Route faults and stats are kept across stop() and start(), like the default route's."""
    sim.set_faults(SimFaults(http_status=503), route="a")
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 503
    await sim.stop()
    await sim.start()
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 503
    assert sim.route_stats("a").responses_by_status == {503: 2}


# --- lifecycle ---------------------------------------------------------------------


async def test_stop_is_quick_with_a_stalled_stream_open(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """stop() cuts a stalled stream at once instead of waiting for it."""
    sim.faults = SimFaults(stall_after=1)
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        for _ in range(3):  # two meta lines and the one text chunk
            await resp.content.readline()
        started = time.monotonic()
        await sim.stop()
        assert time.monotonic() - started < 0.5
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert sim.stats.active_streams == 0


async def test_restart_on_the_same_port(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """After stop() requests are refused; start() listens again on the same port, stats kept."""
    port = sim.port
    assert (await post_chat(session, sim))[0] == 200
    await sim.stop()
    assert not sim.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_chat(session, sim)
    await sim.start()
    assert sim.port == port
    assert (await post_chat(session, sim))[0] == 200
    assert sim.stats.completed_streams == 2


def test_port_is_unknown_before_first_start() -> None:
    """A port-0 simulator has no port until it starts; an explicit one is known at once."""
    with pytest.raises(RuntimeError):
        _ = Simulator().port
    assert Simulator(port=8123).url == "http://127.0.0.1:8123" + UPSTREAM_PATH


# --- command line ------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_builds_options_and_only_given_faults() -> None:
    """Flags map onto SimOptions and SimFaults; unset faults keep their healthy defaults."""
    flags = "--chunks 3 --seed 5 --no-check-signature --http-status 429 --html-200 --max-routes 8"
    options, faults = options_from_args(_parse(*flags.split()))
    assert options == SimOptions(chunks=3, seed=5, check_signature=False, max_routes=8)
    assert faults == SimFaults(http_status=429, html_200=True)
    assert options_from_args(_parse()) == (SimOptions(), SimFaults())


def test_cli_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    """run() refuses invalid settings with exit code 2 and a message."""
    assert run(_parse("--garbage-ratio", "3")) == 2
    assert "garbage_ratio" in capsys.readouterr().err


async def test_cli_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    """run() prints the URL and the route pattern, serves the faults on the default route only, exits 0 on SIGTERM."""
    code = (
        "import argparse, sys\n"
        "from gateway.simulator.cli import add_arguments, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_arguments(parser)\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        "--http-status",
        "418",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
        url = line.split()[3]
        assert url.endswith(UPSTREAM_PATH)
        assert "/_sim/faults" in line
        async with session.post(url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
            assert resp.status == 418
        routes = (await asyncio.wait_for(proc.stdout.readline(), timeout=5)).decode()
        pattern = routes.split()[1]
        assert pattern == url.removesuffix(UPSTREAM_PATH) + "/r/<route>" + UPSTREAM_PATH
        assert "at most 64 routes" in routes
        route_url = pattern.replace("<route>", "backup")
        async with session.post(route_url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=5)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
