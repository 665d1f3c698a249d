"""gateway/simulator/faults.py (and options.py): ``SimFaults``, its error responses, rejections and draws.

Each response fault (an error status and body, Retry-After, an HTML page, an empty
stream), the body-decided rejections, ``ratio`` and ``count``, and the model's
validation; options.py has only its validation here, next to the faults' own.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from pydantic import ValidationError

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, Message, build_body, signed_headers
from gateway.simulator import CLOUDFLARE_PAGE, SimFaults, SimOptions, Simulator, expected_answer
from gateway.simulator.faults import MAX_ANSWER_BYTES, split_error_body
from tests.simulator_support import ANSWER, MODEL, QUESTION, chat_body, parse, post_chat, text_of

# --- error responses ---------------------------------------------------------------


async def test_models_limits_the_faults_to_requests_for_those_models(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """With models set, only requests for those models are faulted; a request for another model is answered."""
    sim.faults = SimFaults(http_status=500, models=(MODEL,))
    status, _, _ = await post_chat(session, sim)
    assert status == 500
    other = build_body("claude-v2", [Message("user", QUESTION)])
    status, _, raw = await post_chat(session, sim, other)
    assert status == 200
    assert text_of(parse(raw)[0]) == expected_answer("claude-v2", QUESTION)
    assert sim.stats.faulted_total == 1
    with pytest.raises(ValidationError):
        SimFaults(http_status=500, models=())


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


@pytest.mark.parametrize("chunk_delay", [0.0, 0.01], ids=["one-write", "paced"])
async def test_answer_pieces_are_the_text_events(session: aiohttp.ClientSession, chunk_delay: float) -> None:
    """answer_pieces: the text events are exactly those pieces, in order, whatever the pacing."""
    pieces = ("Hello, wor", "ld. EN", "D and more")
    async with Simulator(SimOptions(chunk_delay=chunk_delay), SimFaults(answer_pieces=pieces)) as sim:
        status, _, raw = await post_chat(session, sim)
    objects, _ = parse(raw)
    assert status == 200
    assert tuple(o["data"] for o in objects if o.get("event") == "text") == pieces


def test_answer_pieces_must_not_be_empty() -> None:
    """An empty list or an empty piece is refused (an empty text event would be skipped by clients)."""
    for bad in ((), ("a", "")):
        with pytest.raises(ValidationError):
            SimFaults(answer_pieces=bad)


# --- rejections --------------------------------------------------------------------


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


# --- error body pieces, ratio and the model ----------------------------------------


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
