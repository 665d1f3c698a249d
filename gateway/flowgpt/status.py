"""What a non-stream answer from FlowGpt means: status and body classified into the error tree, Retry-After.

g4f's rules: 429/402 are rate limits (Retry-After kept), a 403 with Cloudflare's
challenge page is a block, 401 is auth, 400/413/422 reject one request, anything
else is a status error; a 200 that is an HTML page is a protocol error.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable
from typing import Final

import aiohttp
import orjson

from gateway.errors import (
    UpstreamAuthError,
    UpstreamBlockedError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamStatusError,
)

# Statuses that judge one request's content, not the upstream: another attempt (or another route)
# would get the same answer. 401/403/404/407/408/429 and 5xx say something about the upstream or the
# way to it; so do 411/414/415/431, which would judge the gateway's own framing of every request.
REQUEST_REJECTION_STATUSES: Final = frozenset({400, 413, 422})


CLOUDFLARE_MARKERS: Final = (
    "<title>Just a moment...</title>",
    '<div id="cf-please-wait">',
    "Attention Required! | Cloudflare",
    "cf-spinner-please-wait",
    "cf-cloudflare-status",
)
ERROR_BODY_LIMIT: Final = 64 * 1024  # how much of an error body we read to classify it
# How long an error body may take: the status and headers are already here and decide most of
# the classification, so a body that trickles must not turn a 413 or a 429 into a timeout.
ERROR_BODY_WAIT: Final = 1.0
MESSAGE_LIMIT: Final = 300  # how much of an upstream message we pass on to callers
RETRY_AFTER_CAP: Final = 86400.0  # a day; anything longer is noise we do not pass on


# A JSON string, possibly cut off by the sample's end (even right after a backslash), and
# whether a colon follows it (a key).


async def raise_for_status(response: aiohttp.ClientResponse, scrub: Callable[[str], str] | None = None) -> None:
    """Classify a response that is not a usable NDJSON stream; return if it is one.

    ``scrub`` removes the configured secrets from the body before any of it enters an error: this
    is where outside text enters the gateway's messages (an upstream or proxy may echo a token or
    a ``Proxy-Authorization``), so every surface that shows an error (clients, /readyz, /status,
    the status page, logs, Redis, traces) gets it clean.
    """
    status = response.status
    content_type = response.headers.get("Content-Type", "").lower()
    if 200 <= status < 300:
        if "text/html" in content_type:
            raise UpstreamProtocolError("upstream answered 200 with an HTML page instead of a stream")
        return
    clean = scrub or str

    def error_message(text: str, content_type: str) -> str:
        return clean(_error_message(text, content_type))  # again: the cut may have split a secret

    text = clean(await read_error_body(response))
    if status in (429, 402):
        raise UpstreamRateLimitedError(
            f"upstream rate limit (HTTP {status}): {error_message(text, content_type)}",
            upstream_status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status == 403 and any(marker in text for marker in CLOUDFLARE_MARKERS):
        raise UpstreamBlockedError("upstream blocked the request (Cloudflare challenge)", upstream_status=status)
    if status == 401:
        raise UpstreamAuthError(
            f"upstream rejected the credentials (HTTP 401): {error_message(text, content_type)}",
            upstream_status=status,
        )
    if status in REQUEST_REJECTION_STATUSES:
        raise UpstreamRejectedError(
            f"upstream rejected the request (HTTP {status}): {error_message(text, content_type)}",
            upstream_status=status,
        )
    raise UpstreamStatusError(
        f"upstream returned HTTP {status}: {error_message(text, content_type)}", upstream_status=status
    )


async def read_error_body(response: aiohttp.ClientResponse) -> str:
    """Up to ``ERROR_BODY_LIMIT`` bytes of the body, across however many network chunks arrive.

    Within ``ERROR_BODY_WAIT`` (and the caller's deadline): a body that breaks off or trickles is
    classified on what arrived.
    """
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(ERROR_BODY_WAIT):
            while size < ERROR_BODY_LIMIT:
                part = await response.content.read(ERROR_BODY_LIMIT - size)
                if not part:
                    break
                parts.append(part)
                size += len(part)
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
    return b"".join(parts).decode("utf-8", "replace")


def _error_message(text: str, content_type: str) -> str:
    """The most useful short message in an error body (g4f's rules)."""
    stripped = text.lstrip()
    if "text/html" in content_type or stripped[:15].lower().startswith(("<!doctype", "<html")):
        return "HTML content"
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return stripped[:MESSAGE_LIMIT] or "empty body"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:MESSAGE_LIMIT]
        if isinstance(data.get("message"), str):
            return str(data["message"])[:MESSAGE_LIMIT]
    return stripped[:MESSAGE_LIMIT]


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None  # "inf" or "1e999" from a confused upstream
    return min(max(0.0, seconds), RETRY_AFTER_CAP)
