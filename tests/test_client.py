"""FlowGpt client unit tests (aioresponses): request shape and error classification."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from gateway.errors import (
    UpstreamAuthError,
    UpstreamBlockedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamStatusError,
)
from gateway.flowgpt.client import ChatPrompt, FlowGptClient
from gateway.flowgpt.protocol import UPSTREAM_PATH, Message
from gateway.flowgpt.status import parse_retry_after
from tests.aioresponses_compat import mock_upstream_fixture  # noqa: F401 - fixture

URL = "http://upstream.test" + UPSTREAM_PATH
PROMPT = ChatPrompt("gpt-3.5-turbo", (Message("system", "S"), Message("user", "Q")))
CLOUDFLARE = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body></body></html>"


class CountingObserver:
    """Counts parse failures like the metrics object does."""

    def __init__(self) -> None:
        self.failures = 0

    def json_parse_failure(self) -> None:
        self.failures += 1


@pytest.fixture(name="observer")
def observer_fixture() -> CountingObserver:
    """A fresh observer."""
    return CountingObserver()


@pytest.fixture(name="client")
async def client_fixture(observer: CountingObserver) -> AsyncIterator[FlowGptClient]:
    """A client over a real session (intercepted by aioresponses)."""
    async with aiohttp.ClientSession() as session:
        yield FlowGptClient(session, url=URL, token=SecretStr("null"), observer=observer)


async def test_request_is_signed_and_shaped(mock_upstream: Any, client: FlowGptClient) -> None:
    """The POST carries a valid signature and the protocol body; the answer is streamed back."""
    seen: dict[str, Any] = {}

    def capture(url: Any, **kwargs: Any) -> None:
        seen.update(kwargs)

    mock_upstream.post(URL, body=b'{"event":"text","data":"A"}\n{"event":"text","data":"B"}\n', callback=capture)
    stream = await client.open(PROMPT)
    try:
        assert await stream.read_all() == "AB"
    finally:
        await stream.aclose()
    headers = seen["headers"]
    expected = hashlib.md5(f"{headers['x-timestamp']}-{headers['x-nonce']}-Bearer null".encode()).hexdigest()
    assert headers["x-signature"] == expected
    assert b'"question":"Q"' in seen["data"]
    assert b'"system":"S"' in seen["data"]


async def test_bad_lines_reach_the_observer(
    mock_upstream: Any, client: FlowGptClient, observer: CountingObserver
) -> None:
    """Unparseable lines are skipped and each one is reported once."""
    mock_upstream.post(URL, body=b'garbage\n{"event":"text","data":"ok"}\n{broken\n')
    stream = await client.open(PROMPT)
    try:
        assert await stream.read_all() == "ok"
    finally:
        await stream.aclose()
    assert observer.failures == 2


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_type", "message_part"),
    [
        (429, '{"error": {"message": "slow down"}}', {"Retry-After": "7"}, UpstreamRateLimitedError, "slow down"),
        (402, '{"message": "pay up"}', {}, UpstreamRateLimitedError, "pay up"),
        (403, CLOUDFLARE, {"Content-Type": "text/html"}, UpstreamBlockedError, "Cloudflare"),
        (403, '{"message": "forbidden"}', {}, UpstreamStatusError, "forbidden"),
        (401, '{"message": "token expired"}', {}, UpstreamAuthError, "token expired"),
        (
            502,
            "<html><body>Bad gateway</body></html>",
            {"Content-Type": "text/html"},
            UpstreamStatusError,
            "HTML content",
        ),
        (504, "upstream timed out", {}, UpstreamStatusError, "upstream timed out"),
        (500, '{"error": {"message": "boom"}}', {}, UpstreamStatusError, "boom"),
    ],
)
async def test_errors_are_classified(
    mock_upstream: Any,
    client: FlowGptClient,
    status: int,
    body: str,
    headers: dict[str, str],
    error_type: type[UpstreamError],
    message_part: str,
) -> None:
    """Each non-2xx answer becomes the error class g4f would have raised, with its message."""
    mock_upstream.post(URL, status=status, body=body, headers=headers)
    with pytest.raises(error_type) as info:
        await client.open(PROMPT)
    assert type(info.value) is error_type
    assert message_part in info.value.message
    if isinstance(info.value, UpstreamStatusError):
        assert info.value.upstream_status == status


async def test_rate_limit_keeps_retry_after(mock_upstream: Any, client: FlowGptClient) -> None:
    """429's Retry-After survives into the error."""
    mock_upstream.post(URL, status=429, body="{}", headers={"Retry-After": "12"})
    with pytest.raises(UpstreamRateLimitedError) as info:
        await client.open(PROMPT)
    assert info.value.retry_after == 12.0


async def test_html_200_is_a_protocol_error(mock_upstream: Any, client: FlowGptClient) -> None:
    """A 200 HTML page is not a stream."""
    mock_upstream.post(URL, status=200, body="<html></html>", headers={"Content-Type": "text/html"})
    with pytest.raises(UpstreamProtocolError, match="HTML"):
        await client.open(PROMPT)


async def test_only_garbage_is_a_protocol_error(mock_upstream: Any, client: FlowGptClient) -> None:
    """A stream with bad lines and no text at all is a protocol error, not an empty answer."""
    mock_upstream.post(URL, body=b"nope\nstill nope\n")
    stream = await client.open(PROMPT)
    try:
        with pytest.raises(UpstreamProtocolError, match="2 unparseable lines"):
            await stream.read_all()
    finally:
        await stream.aclose()


async def test_connection_failure_is_a_connect_error(mock_upstream: Any, client: FlowGptClient) -> None:
    """A transport failure before any response is translated at the boundary."""
    mock_upstream.post(URL, exception=aiohttp.ClientConnectionError("refused"))
    with pytest.raises(UpstreamConnectError) as info:
        await client.open(PROMPT)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        ("-3", 0.0),
        ("soon", None),
        ("1.5", 1.5),
        ("inf", None),
        ("1e999", None),
        ("nan", None),
        ("99999999", 86400.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delta-seconds parse; nonsense is ignored."""
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    """An HTTP date in the past means retry now."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
