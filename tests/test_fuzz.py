"""Property-based fuzzing: hostile requests never cause a 500, hostile upstream bytes never crash the decoder.

Every test builds its gateway once and runs all examples against it (hence the
suppressed function-scoped-fixture health check); example counts stay modest so the
module runs in seconds.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.flowgpt.ndjson import SAMPLE_BYTES, NdjsonDecoder
from gateway.flowgpt.protocol import UPSTREAM_PATH
from tests.gateway_support import GatewayFactory, chat_body, sse_events
from tests.metrics_support import delta, scrape

Client = TestClient[web.Request, web.Application]

# FUZZ_SCALE=10 .venv/bin/pytest tests/test_fuzz.py runs ten times the examples (docs/reliability.md).
SCALE: Final = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
FUZZ: Final = settings(
    max_examples=60 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
CHAT: Final = "/v1/chat/completions"
ERROR_STATUSES: Final = frozenset({400, 404, 405, 408, 413, 415, 422})
REASONS: Final = frozenset({"invalid JSON", "line too long", "text event without string data"})


def _assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The gateway logged no ERROR and no traceback (aiohttp's own protocol-error records are its business)."""
    ours = [r for r in caplog.records if r.name.startswith("gateway") and (r.levelno >= logging.ERROR or r.exc_info)]
    assert ours == []


async def _assert_clean_response(response: Any, allowed: frozenset[int]) -> None:
    """The status is allowed; an error is OpenAI-shaped JSON with a message and a code, never a 500."""
    assert response.status in allowed, response.status
    raw = await response.read()
    if response.status == 200:
        return
    if "X-Request-ID" not in response.headers:
        # aiohttp refused the request before the application saw it (e.g. an unsupported
        # Content-Encoding); its plain-text 400 is the best that layer offers.
        assert response.status == 400
        return
    error = orjson.loads(raw)["error"]
    assert isinstance(error["message"], str)
    assert isinstance(error["code"], str)
    assert "Traceback" not in error["message"]


# -- request bodies ---------------------------------------------------------------------------


def json_values(integers: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """Arbitrary JSON documents (small); ``integers`` decides how big numbers get."""
    scalars = (
        st.none() | st.booleans() | integers | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    )


JSON_VALUES: Final = json_values(st.integers())  # sent with the stdlib encoder, so beyond 64 bits too
JSON_VALUES_64: Final = json_values(st.integers(-(2**63), 2**64 - 1))  # what orjson can encode
ROLES: Final = st.sampled_from(["user", "assistant", "system", "developer", "tool", "", "USER"]) | JSON_VALUES
CONTENT: Final = (
    st.just("")
    | st.text(max_size=40)
    | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | JSON_VALUES, "text": st.text()}),
        max_size=3,
    )
    | JSON_VALUES
)
MESSAGE: Final = (
    st.fixed_dictionaries({"role": ROLES, "content": CONTENT}, optional={"name": JSON_VALUES}) | JSON_VALUES
)
CHAT_ISH: Final = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-3.5-turbo", "gemini", "claude-v2", "", "gpt-5", "x" * 300]) | JSON_VALUES,
        "messages": st.lists(MESSAGE, max_size=4) | JSON_VALUES,
        "stream": st.booleans() | JSON_VALUES,
        "temperature": st.floats(-1, 3, allow_nan=False) | JSON_VALUES,
        "n": st.integers(-1, 3) | JSON_VALUES,
        "max_tokens": JSON_VALUES,
        "upstream_url": st.just("http://127.0.0.1:1/evil"),
    },
)


@FUZZ
@given(body=st.binary(max_size=2048))
async def test_arbitrary_bytes_bodies_never_500(gateway: Client, caplog: pytest.LogCaptureFixture, body: bytes) -> None:
    """Any byte string as a request body gets a 4xx OpenAI-shaped error (or, by luck, an answer)."""
    response = await gateway.post(CHAT, data=body, headers={"Content-Type": "application/json"})
    await _assert_clean_response(response, ERROR_STATUSES | {200})
    _assert_no_traceback(caplog)


@FUZZ
@given(body=CHAT_ISH | JSON_VALUES)
async def test_json_ish_bodies_never_500_nor_502(gateway: Client, caplog: pytest.LogCaptureFixture, body: Any) -> None:
    """JSON structures shaped like chat requests get 200, 400 or 404; a healthy upstream never rejects what we send."""
    response = await gateway.post(CHAT, data=json.dumps(body), headers={"Content-Type": "application/json"})
    # 502 would mean the gateway accepted a request and then built an upstream body the upstream refuses.
    await _assert_clean_response(response, frozenset({200, 400, 404}))
    _assert_no_traceback(caplog)


# -- request headers --------------------------------------------------------------------------

# Framing headers are excluded: changing them makes the test client send a different request,
# not a hostile header. Everything else, including Authorization and Content-Type, is fair game.
FRAMING: Final = frozenset({"content-length", "transfer-encoding", "connection", "host", "expect", "upgrade"})
HEADER_NAMES: Final = st.sampled_from(
    ["Authorization", "Content-Type", "Content-Encoding", "X-Request-ID", "Accept", "Accept-Encoding", "Cookie"]
) | st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=20).filter(
    lambda name: name.lower() not in FRAMING
)
HEADER_VALUES: Final = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).map(
    str.strip
) | st.sampled_from(["gzip", "br", "deflate", "Bearer ", "Bearer x", "text/plain", "application/json; charset=latin-1"])


@FUZZ
@given(headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6), stream=st.booleans())
async def test_arbitrary_headers_never_500(
    gateway: Client, caplog: pytest.LogCaptureFixture, headers: dict[str, str], stream: bool
) -> None:
    """Any set of well-formed header fields with a valid body gets an answer or a 4xx, never a 500."""
    response = await gateway.post(CHAT, data=orjson.dumps(chat_body(stream=stream)), headers=headers)
    await _assert_clean_response(response, ERROR_STATUSES | {200})
    _assert_no_traceback(caplog)


# -- upstream byte streams --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One NDJSON line (without its newline) and what the decoder must make of it."""

    raw: bytes
    fragment: str | None = None  # the text of a good text event (empty data: no fragment)
    bad: bool = False


def _invalid_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return False


def line_strategy(limit: int) -> st.SearchStrategy[Line]:
    """Good, skipped and bad lines, as the decoder's docstring defines them, for ``max_line_bytes=limit``."""
    text = st.text(max_size=24)
    good = text.map(lambda s: Line(orjson.dumps({"event": "text", "data": s}), fragment=s))
    meta = st.sampled_from(
        [b'{"event":"info","data":{"stage":"start"}}', b'{"id":"c","status":"queued"}', b"[1,2]", b"42", b"null"]
    ).map(Line) | JSON_VALUES_64.filter(lambda v: not (isinstance(v, dict) and v.get("event") == "text")).map(
        lambda v: Line(orjson.dumps(v))
    ).filter(lambda line: len(line.raw) <= limit)
    blank = st.text(alphabet=" \t\r\x0b\x0c", max_size=6).map(lambda s: Line(s.encode()))
    random_bytes = st.binary(min_size=1, max_size=60).filter(
        lambda b: b"\n" not in b and bool(b.strip()) and _invalid_json(b)
    )
    truncated = st.tuples(text, st.integers(1, 200)).map(
        lambda t: orjson.dumps({"event": "text", "data": t[0]})[: -min(t[1], 10)]
    )
    bad_utf8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc"]).map(
        lambda junk: b'{"event":"text","data":"' + junk + b'"}'
    )
    not_a_string = JSON_VALUES_64.filter(lambda v: not isinstance(v, str)).map(
        lambda v: orjson.dumps({"event": "text", "data": v})
    )
    too_long = st.integers(limit + 1, 4 * limit).map(
        lambda n: b'{"event":"text","data":"' + b"x" * max(0, n - 26) + b'"}'
    ) | st.integers(limit + 1, 2 * limit).map(lambda n: b" " * n)
    bad = (random_bytes | truncated | bad_utf8 | not_a_string).filter(lambda b: len(b) <= limit) | too_long
    return good.filter(lambda line: len(line.raw) <= limit) | meta | blank | bad.map(lambda b: Line(b, bad=True))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _stream(lines: list[Line], trailing_newline: bool) -> bytes:
    data = b"\n".join(line.raw for line in lines)
    return data + b"\n" if trailing_newline and lines else data


DECODER_LIMIT: Final = 256


@settings(max_examples=300 * SCALE, deadline=None, database=None)
@given(
    lines=st.lists(line_strategy(DECODER_LIMIT), max_size=25),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
    trailing_newline=st.booleans(),
)
def test_decoder_counts_exactly_the_bad_lines(lines: list[Line], cuts: list[int], trailing_newline: bool) -> None:
    """However the stream is split, the decoder yields every good fragment and counts each bad line once."""
    reports: list[tuple[bytes, str]] = []
    decoder = NdjsonDecoder(max_line_bytes=DECODER_LIMIT, on_bad_line=lambda s, r: reports.append((s, r)))
    fragments: list[str] = []
    for chunk in _split(_stream(lines, trailing_newline), cuts):
        fragments += decoder.feed(chunk)
    fragments += decoder.finish()

    assert fragments == [line.fragment for line in lines if line.fragment]
    assert decoder.bad_lines == sum(line.bad for line in lines)
    assert decoder.text_events == sum(line.fragment is not None for line in lines)
    assert len(reports) == decoder.bad_lines
    assert all(len(sample) <= SAMPLE_BYTES and reason in REASONS for sample, reason in reports)


@settings(max_examples=200 * SCALE, deadline=None, database=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_decoder_survives_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    """Random bytes split at random points never raise; the result does not depend on the split."""
    whole = NdjsonDecoder(max_line_bytes=64)
    expected = whole.feed(data) + whole.finish()
    decoder = NdjsonDecoder(max_line_bytes=64)
    fragments: list[str] = []
    for chunk in _split(data, cuts):
        fragments += decoder.feed(chunk)
    fragments += decoder.finish()
    assert fragments == expected
    assert decoder.bad_lines == whole.bad_lines


def test_huge_line_is_dropped_without_buffering_it() -> None:
    """A 5 MiB line arriving in 64 KiB chunks costs one bad line and never more than limit + chunk of buffer."""
    limit, chunk = 1024 * 1024, 64 * 1024
    data = b'{"event":"text","data":"' + b"y" * (5 * 1024 * 1024) + b'"}\n{"event":"text","data":"after"}\n'
    decoder = NdjsonDecoder(max_line_bytes=limit)
    fragments: list[str] = []
    for start in range(0, len(data), chunk):
        fragments += decoder.feed(data[start : start + chunk])
        assert len(decoder._buffer) <= limit + chunk
    assert fragments + decoder.finish() == ["after"]
    assert decoder.bad_lines == 1


@dataclass
class _Upstream:
    """A stand-in upstream that answers every chat call with the chunks it holds."""

    chunks: list[bytes]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for chunk in self.chunks:
            if chunk:
                await response.write(chunk)
        await response.write_eof()
        return response


GATEWAY_LIMIT: Final = 1024  # the smallest GATEWAY_UPSTREAM_MAX_LINE_BYTES allowed


@pytest.fixture(name="byte_gateway")
async def byte_gateway_fixture(make_gateway: GatewayFactory) -> AsyncIterator[tuple[_Upstream, Client]]:
    """A gateway in front of a raw loopback upstream whose answer bytes a test sets."""
    upstream = _Upstream([])
    app = web.Application()
    app.router.add_post(UPSTREAM_PATH, upstream.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    gateway = await make_gateway(
        upstream_url=str(server.make_url(UPSTREAM_PATH)),
        upstream_max_line_bytes=GATEWAY_LIMIT,
        retry_max=0,
        breaker_fail_max=10**6,  # examples without text are upstream failures; keep admitting
    )
    yield upstream, gateway
    await server.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(
    lines=st.lists(line_strategy(GATEWAY_LIMIT), max_size=12),
    cuts=st.lists(st.integers(0, 10**6), max_size=8),
    stream=st.booleans(),
)
async def test_gateway_survives_arbitrary_upstream_streams(
    byte_gateway: tuple[_Upstream, Client], lines: list[Line], cuts: list[int], stream: bool
) -> None:
    """Through the whole gateway: the answer is the good text, 502 when there is none; bad lines are counted."""
    upstream, gateway = byte_gateway
    upstream.chunks = _split(_stream(lines, trailing_newline=True), cuts)
    before = await scrape(gateway)

    response = await gateway.post(CHAT, json=chat_body(stream=stream))
    text = "".join(line.fragment for line in lines if line.fragment)
    if not text:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_protocol"
    elif stream:
        assert response.status == 200
        events = sse_events(await response.text())
        assert events[-1] == "[DONE]"
        chunks = [orjson.loads(event)["choices"][0]["delta"] for event in events[:-1]]
        assert "".join(chunk.get("content", "") for chunk in chunks) == text
    else:
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"] == text

    after = await scrape(gateway)
    bad = sum(line.bad for line in lines)
    assert delta(before, after, "gateway_upstream_json_parse_failures_total", provider="flowgpt", route="default") == bad
