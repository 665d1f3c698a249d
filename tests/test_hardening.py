"""Hardening: size limits, constant-time secrets, no secrets or prompts in logs, no client-steered upstream,
guarded admin endpoints, and slow clients that cannot hold a connection."""

from __future__ import annotations

import asyncio
import gzip
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app_keys import ROUTES
from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator import SimFaults, SimOptions, Simulator
from tests.gateway_support import GatewayFactory, chat_body

Client = TestClient[web.Request, web.Application]
CHAT: Final = "/v1/chat/completions"

UPSTREAM_TOKEN: Final = "upstream-SECRET-token-5b1e"
API_KEY: Final = "client-KEY-secret-93d2"
ADMIN_TOKEN: Final = "admin-SECRET-tok-11aa"
MARKER: Final = "PROMPT-MARKER-7f3a9c"


def _error(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(body)["error"]
    return error


# -- size limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "headers", "path"),
    [
        ("header value", {"X-Big": "a" * 3000}, "/healthz"),
        ("header name", {"X-" + "n" * 3000: "v"}, "/healthz"),
        ("request line", {}, "/healthz?q=" + "a" * 3000),
    ],
)
async def test_oversized_request_line_or_header_is_refused(
    make_gateway: GatewayFactory, what: str, headers: dict[str, str], path: str
) -> None:
    """Past GATEWAY_MAX_HEADER_BYTES the HTTP layer answers 400 before any handler runs; just below it passes."""
    gateway = await make_gateway(max_header_bytes=2048)
    response = await gateway.get(path, headers=headers)
    assert response.status in (400, 431), what
    fits = await gateway.get("/healthz?q=" + "a" * 1000, headers={"X-Big": "a" * 1500})
    assert fits.status == 200


async def test_too_many_headers_are_refused(gateway: Client) -> None:
    """A flood of header fields is refused by the HTTP layer with a 4xx."""
    response = await gateway.get("/healthz", headers={f"X-H{i}": "v" for i in range(200)})
    assert 400 <= response.status < 500


async def test_body_over_the_limit_is_413_with_or_without_content_length(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """A declared or a chunked (undeclared) body over GATEWAY_MAX_BODY_BYTES is 413 request_too_large."""
    gateway = await make_gateway(max_body_bytes=4096)
    declared = await gateway.post(CHAT, json=chat_body("x" * 5000))
    assert declared.status == 413
    assert _error(await declared.read())["code"] == "request_too_large"

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    undeclared = await gateway.post(CHAT, data=chunked(), headers={"Content-Type": "application/json"})
    assert undeclared.status == 413
    assert _error(await undeclared.read())["code"] == "request_too_large"
    assert sim.stats.requests_total == 0


async def test_compressed_body_is_limited_after_decompression(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A small gzip body that inflates past the limit (a zip bomb) is 413, not a memory spike."""
    gateway = await make_gateway(max_body_bytes=64 * 1024)
    bomb = gzip.compress(b'{"model": "gpt-3.5-turbo", "x": "' + b"0" * (16 * 1024 * 1024) + b'"}', compresslevel=9)
    assert len(bomb) < 64 * 1024
    response = await gateway.post(
        CHAT, data=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert response.status == 413
    assert sim.stats.requests_total == 0


async def test_undecodable_body_is_a_400_not_a_500(gateway: Client) -> None:
    """A body that is not what its Content-Encoding claims is the client's error (400 JSON), never a 500."""
    response = await gateway.post(
        CHAT, data=orjson.dumps(chat_body()), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert response.status == 400
    assert _error(await response.read())["code"] == "invalid_request"


async def test_empty_question_is_400_and_cannot_trip_the_breaker(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """FlowGpt rejects an empty question; the gateway refuses it itself, so no client can open the breaker with it."""
    gateway = await make_gateway(breaker_fail_max=2)
    for content in ("", [], [{"type": "text", "text": ""}], "", ""):
        body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": content}]}
        response = await gateway.post(CHAT, json=body)
        assert response.status == 400
        assert _error(await response.read())["param"] == "messages.0.content"
    assert sim.stats.requests_total == 0
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"
    assert (await gateway.post(CHAT, json=chat_body())).status == 200


# -- secrets compared in constant time --------------------------------------------------------


@pytest.fixture(name="compare_calls")
def compare_calls_fixture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every hmac.compare_digest call made while the test runs (still compared for real)."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    return calls


async def test_api_keys_are_compared_in_constant_time(
    make_gateway: GatewayFactory, compare_calls: list[tuple[bytes, bytes]]
) -> None:
    """Every configured key is compared with hmac.compare_digest, with no early exit on a match."""
    gateway = await make_gateway(api_keys=f"{API_KEY},other-key-2,other-key-3")
    cases = [
        (f"Bearer {API_KEY}", 200),
        ("Bearer other-key-3", 200),
        (f"Bearer {API_KEY[:-1]}", 401),
        (f"Bearer {API_KEY}x", 401),
        ("Bearer ", 401),
        (f"Basic {API_KEY}", 401),
    ]
    for header, status in cases:
        compare_calls.clear()
        response = await gateway.get("/v1/models", headers={"Authorization": header})
        assert response.status == status, header
        if header.startswith("Bearer"):
            assert len(compare_calls) == 3, header  # all keys, whichever matched
    compare_calls.clear()
    assert (await gateway.get("/v1/models")).status == 401


async def test_admin_endpoints_are_guarded(
    make_gateway: GatewayFactory, compare_calls: list[tuple[bytes, bytes]]
) -> None:
    """Without a token the admin routes do not exist; missing is 401, wrong 403, right 200 via compare_digest."""
    closed = await make_gateway()
    for method, path in (("GET", "/admin/state"), ("POST", "/admin/breaker"), ("POST", "/admin/working")):
        response = await closed.request(method, path, json={"mode": "auto"})
        assert response.status == 404
        assert _error(await response.read())["code"] == "not_found"

    gateway = await make_gateway(admin_token=ADMIN_TOKEN)
    assert (await gateway.get("/admin/state")).status == 401
    assert (await gateway.get("/admin/state", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})).status == 401
    for wrong in ("nope", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x"):
        response = await gateway.get("/admin/state", headers={"Authorization": f"Bearer {wrong}"})
        assert response.status == 403
        assert _error(await response.read())["code"] == "forbidden"
    compare_calls.clear()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await gateway.get("/admin/state", headers=auth)).status == 200
    assert compare_calls == [(ADMIN_TOKEN.encode(), ADMIN_TOKEN.encode())]
    forced = await gateway.post("/admin/breaker", json={"mode": "open"}, headers=auth)
    assert forced.status == 200
    assert gateway.app[ROUTES]["default"].breaker.state == "open"
    # An API key is not an admin token.
    keyed = await make_gateway(admin_token=ADMIN_TOKEN, api_keys=API_KEY)
    assert (await keyed.get("/admin/state", headers={"Authorization": f"Bearer {API_KEY}"})).status == 403


# -- no secrets or prompt text in logs --------------------------------------------------------


@dataclass
class _EchoUpstream:
    """A misbehaving upstream that repeats the question where a careless gateway might log it."""

    mode: str = "broken_line"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        question = str(orjson.loads(await request.read())["question"])
        if self.mode == "error_echo":
            return web.json_response({"message": f"cannot answer {question}"}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # A truncated text line (a proxy cut it), then a valid answer.
        await response.write(b'{"event":"text","data":"' + question.encode() + b"\n")
        await response.write(orjson.dumps({"event": "text", "data": f"echo {question}"}) + b"\n")
        await response.write_eof()
        return response


@pytest.fixture(name="echo_upstream")
async def echo_upstream_fixture() -> AsyncIterator[tuple[_EchoUpstream, str]]:
    """The echoing upstream on loopback, and its chat URL."""
    upstream = _EchoUpstream()
    app = web.Application()
    app.router.add_post(UPSTREAM_PATH, upstream.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield upstream, str(server.make_url(UPSTREAM_PATH))
    await server.close()


async def test_no_secrets_or_prompt_text_in_logs(
    make_gateway: GatewayFactory,
    echo_upstream: tuple[_EchoUpstream, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG, across success, bad lines, upstream errors, timeouts and 401s, no token, key or prompt is logged."""
    caplog.set_level(logging.DEBUG)
    secrets = {"upstream_token": UPSTREAM_TOKEN, "api_keys": API_KEY, "admin_token": ADMIN_TOKEN}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    question = f"{MARKER} is private"  # first, so that any truncated sample of a line would include it
    async with Simulator(SimOptions(token=UPSTREAM_TOKEN, chunks=4)) as sim:
        gateway = await make_gateway(
            upstream_url=sim.url,
            timeout_first_token=0.2,
            timeout_idle=0.2,
            breaker_fail_max=100,
            probe_enabled=True,
            probe_interval=0.05,
            probe_unhealthy_interval=0.05,
            probe_unhealthy_threshold=100,
            **secrets,
        )
        faults = [
            SimFaults(),
            SimFaults(garbage_ratio=1.0),
            SimFaults(http_status=401),
            SimFaults(http_status=500),
            SimFaults(http_status=429, retry_after=1),
            SimFaults(http_status=403, http_body="cloudflare"),
            SimFaults(reset_after=1),
            SimFaults(stall_after=1),
            SimFaults(html_200=True),
            SimFaults(empty_stream=True),
        ]
        for fault in faults:
            sim.faults = fault
            for stream in (False, True):
                response = await gateway.post(CHAT, json=chat_body(question, stream=stream), headers=auth)
                await response.read()
        assert sim.stats.requests_total >= 2 * len(faults)
        sim.faults = SimFaults()
        await asyncio.sleep(0.15)  # a few probes with the secret token
        for headers in ({}, {"Authorization": f"Bearer {API_KEY}-wrong"}, {"Authorization": f"Bearer {MARKER}"}):
            assert (await gateway.post(CHAT, json=chat_body(question), headers=headers)).status == 401
        for body in (chat_body(question, model=MARKER), {"model": "gpt-3.5-turbo", "messages": [{"role": MARKER}]}):
            assert (await gateway.post(CHAT, json=body, headers=auth)).status in (400, 404)
        bad_json = f'{{"model": "{MARKER}", oops'.encode()
        assert (await gateway.post(CHAT, data=bad_json, headers=auth)).status == 400
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}-wrong"}
        assert (await gateway.get("/admin/state", headers=admin)).status == 403
        status = await (await gateway.get("/status")).text()

        # An upstream that echoes the question in a broken line and in an error body.
        upstream, url = echo_upstream
        echo = await make_gateway(upstream_url=url, upstream_max_line_bytes=1024, retry_max=0, **secrets)
        for mode in ("broken_line", "error_echo"):
            upstream.mode = mode
            for stream in (False, True):
                await (await echo.post(CHAT, json=chat_body(question, stream=stream), headers=auth)).read()

    assert any("unusable line" in record.getMessage() for record in caplog.records)  # the bad-line path ran
    logged = caplog.text + "".join(repr(vars(record)) for record in caplog.records)
    for secret in (UPSTREAM_TOKEN, API_KEY, ADMIN_TOKEN, MARKER):
        assert secret not in logged, secret
    for secret in (UPSTREAM_TOKEN, API_KEY, ADMIN_TOKEN):
        assert secret not in status


# -- clients cannot steer the upstream --------------------------------------------------------

PER_REQUEST_HEADERS: Final = frozenset({"x-nonce", "x-signature", "x-timestamp", "x-flow-device-id"})
HOSTILE_HEADERS: Final = {
    "Host": "evil.example:1",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-For": "10.6.6.6",
    "Forwarded": "for=10.6.6.6;host=evil.example;proto=https",
    "X-Real-IP": "10.6.6.6",
    "Via": "1.1 evil",
    "Proxy": "http://127.0.0.1:1",
    "Proxy-Authorization": "Basic ZXZpbDpldmls",
    "Proxy-Connection": "keep-alive",
    "X-Upstream-URL": "http://127.0.0.1:1" + UPSTREAM_PATH,
    "Authorization": "Bearer client-supplied-token",
    "X-Nonce": "evil",
    "X-Flow-Device-Id": "evil",
    "Cookie": "session=evil",
    "User-Agent": "evil-agent/1.0",
    "Origin": "https://evil.example",
    "Referer": "https://evil.example/",
}
BODY_EXTRAS: Final[dict[str, Any]] = {
    "upstream_url": "http://127.0.0.1:1" + UPSTREAM_PATH,
    "url": "http://127.0.0.1:1/",
    "base_url": "http://127.0.0.1:1/",
    "api_base": "http://127.0.0.1:1/",
    "proxy": "http://127.0.0.1:1",
    "headers": {"Authorization": "Bearer evil", "Host": "evil.example"},
    "extra_headers": {"X-Evil": "1"},
    "extra_body": {"question": "evil", "model": "claude-v2"},
    "user": "evil",
}


def _stable(headers: dict[str, str] | None) -> dict[str, str]:
    assert headers is not None
    return {k: v for k, v in headers.items() if k.lower() not in PER_REQUEST_HEADERS}


async def test_clients_cannot_steer_the_upstream(
    gateway: Client, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Body fields outside the table are refused; Host, forwarding and proxy headers and proxy env vars change nothing."""
    plain = await gateway.post(CHAT, json=chat_body("steer?"))
    assert plain.status == 200
    expected_headers, expected_body = _stable(sim.stats.last_headers), sim.stats.last_body

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    monkeypatch.setenv("NO_PROXY", "")
    # Body fields outside the field table are refused by name before anything goes upstream.
    steering = await gateway.post(CHAT, json=chat_body("steer?", **BODY_EXTRAS), headers=HOSTILE_HEADERS)
    error = (await steering.json())["error"]
    assert (steering.status, error["code"], error["param"]) == (400, "unsupported_parameter", "upstream_url")
    assert sim.stats.requests_total == 1
    hostile = await gateway.post(CHAT, json=chat_body("steer?", user="evil"), headers=HOSTILE_HEADERS)
    assert hostile.status == 200
    assert sim.stats.requests_total == 2  # it reached the configured upstream, directly
    assert _stable(sim.stats.last_headers) == expected_headers
    assert sim.stats.last_body == expected_body
    sent = sim.stats.last_headers
    assert sent is not None
    assert sent["x-nonce"] != "evil"
    assert sent["x-flow-device-id"] != "evil"
    assert sent["Authorization"] == "Bearer null"


# -- slow clients -----------------------------------------------------------------------------


async def _read_until_closed(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, bool]:
    """What the server sends within ``seconds``, and whether it closed the connection."""
    received = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


@pytest.mark.parametrize("dribble", [False, True], ids=["stops", "dribbles"])
async def test_slow_body_gets_408_within_the_read_timeout(make_gateway: GatewayFactory, dribble: bool) -> None:
    """A client that declares a body and then stalls or dribbles it gets 408 once GATEWAY_CLIENT_READ_TIMEOUT passes."""
    gateway = await make_gateway(client_read_timeout=0.3)
    assert gateway.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    await writer.drain()
    started = time.monotonic()

    async def trickle() -> None:
        while True:
            await asyncio.sleep(0.05)
            writer.write(b" ")
            await writer.drain()

    trickler = asyncio.create_task(trickle()) if dribble else None
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=2.0)
        elapsed = time.monotonic() - started
    finally:
        if trickler is not None:
            trickler.cancel()
            await asyncio.gather(trickler, return_exceptions=True)
        writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert 0.25 <= elapsed < 1.5


async def test_client_that_never_finishes_its_headers_is_disconnected(make_gateway: GatewayFactory) -> None:
    """Slowloris: a client dribbling header lines forever is cut off after GATEWAY_KEEPALIVE_TIMEOUT."""
    gateway = await make_gateway(keepalive_timeout=0.5)
    assert gateway.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        for i in range(100):
            await asyncio.sleep(0.1)
            writer.write(b"X-Slow-%d: 1\r\n" % i)

    trickler = asyncio.create_task(trickle())
    try:
        _, closed = await _read_until_closed(reader, 2.0)
    finally:
        trickler.cancel()
        await asyncio.gather(trickler, return_exceptions=True)
        writer.close()
    assert closed
