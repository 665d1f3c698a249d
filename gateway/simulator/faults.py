"""Faults to inject: ``SimFaults``, the error bodies and pages they send, and the garbage lines.

Pure data and small functions (no I/O), so the HTTP layer, the CLI and the tests
share one definition of each fault.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Annotated, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.flowgpt.status import CLOUDFLARE_MARKERS
from gateway.simulator.answers import HTML, JSON, TEXT, even_pieces

# The page carries the markers the gateway's client (like g4f) recognises a Cloudflare block by,
# taken from the one place they are defined.
CLOUDFLARE_PAGE: Final = f"""<!DOCTYPE html>
<html lang="en-US">
<head>
{CLOUDFLARE_MARKERS[0]}
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow">
</head>
<body>
<div class="main-wrapper" role="main">
<div class="main-content">
<h1 class="zone-name-title h1">prod-backend-k8s.flowgpt.com</h1>
<h2 class="h2" id="challenge-running">Checking if the site connection is secure</h2>
{CLOUDFLARE_MARKERS[1]}<div id="cf-spinner-please-wait"></div></div>
<noscript><div id="challenge-error-title">Enable JavaScript and cookies to continue</div></noscript>
</div>
</div>
<div class="footer" role="contentinfo">Performance &amp; security by Cloudflare</div>
</body>
</html>
"""

# A 200 that is not the API at all: what a misrouted proxy or a maintenance page looks like.
MAINTENANCE_PAGE: Final = """<!DOCTYPE html>
<html><head><title>FlowGPT - Maintenance</title></head>
<body><h1>We'll be right back</h1><p>FlowGPT is under scheduled maintenance.</p></body></html>
"""

# Bounds the answer_bytes fault: big enough to outlast any socket buffers, small
# enough that a typo cannot keep a stream busy for minutes.
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024

# None is valid JSON and none is blank (blank lines are legitimately skipped).
GARBAGE_LINES: Final[tuple[bytes, ...]] = (
    b'{"event":"text","data":"trunc\n',
    b"<!-- upstream proxy buffer flush -->\n",
    b"data: [not-json]\n",
)


class SimFaults(BaseModel):
    """Faults to inject into chat responses; ``SimFaults()`` is a healthy upstream.

    Precedence when several are set: first the rejections, decided by the request body
    alone (``reject_over_bytes`` > ``reject_marker``); they skip the ``ratio`` draw but
    each rejection counts towards ``count``. A request they let through is then faulted
    by ``ratio``: ``http_status`` (its body cut by ``error_body_chunks``) > ``html_200``
    > ``empty_stream`` > a stream shaped by ``answer_pieces``, ``answer_bytes``, ``slow_first_token``,
    ``garbage_ratio``, ``stall_after`` and ``reset_after``. Frozen: replace the whole
    object to change faults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    reject_over_bytes: int | None = Field(default=None, ge=1)
    reject_marker: str | None = Field(default=None, min_length=1)
    reject_status: int = Field(default=400, ge=400, le=499)
    http_status: int | None = Field(default=None, ge=100, le=599)
    http_body: str | None = None
    retry_after: float | None = Field(default=None, ge=0)
    error_body_chunks: int | None = Field(default=None, ge=2)
    error_chunk_delay: float = Field(default=0.05, ge=0)
    slow_first_token: float = Field(default=0.0, ge=0)
    answer_bytes: int | None = Field(default=None, ge=1, le=MAX_ANSWER_BYTES)
    # The answer's text events, exactly these pieces (so tests know where an upstream chunk ends).
    answer_pieces: tuple[Annotated[str, Field(min_length=1)], ...] | None = Field(default=None, min_length=1)
    stall_after: int | None = Field(default=None, ge=0)
    reset_after: int | None = Field(default=None, ge=0)
    garbage_ratio: float = Field(default=0.0, ge=0, le=1)
    html_200: bool = False
    empty_stream: bool = False
    ratio: float = Field(default=1.0, ge=0, le=1)
    count: int | None = Field(default=None, ge=1)  # fault this many requests, then heal by itself
    # Fault only requests signed with this bearer token (one account, or one host's way out); others are healthy.
    only_token: str | None = Field(default=None, min_length=1)
    # Fault only requests for these FlowGpt models (the body's ``model``); others are healthy.
    models: tuple[str, ...] | None = Field(default=None, min_length=1)

    @cached_property
    def active(self) -> bool:
        """True when any fault is set (``ratio``, ``count``, ``reject_status`` alone change nothing); cached."""
        return self.reject_over_bytes is not None or self.reject_marker is not None or self.shapes_responses

    @cached_property
    def shapes_responses(self) -> bool:
        """True when a fault other than the rejections is set: the ones ``ratio`` draws for."""
        return self.model_dump(exclude=_NOT_RESPONSE_FAULTS) != _HEALTHY

    def applies_to(self, authorization: str | None, model: str | None = None) -> bool:
        """Whether these faults concern a request with this ``Authorization`` header and ``model``."""
        if self.models is not None and model not in self.models:
            return False
        return self.only_token is None or authorization == f"Bearer {self.only_token}"

    def rejection(self, body: bytes) -> tuple[int, bytes] | None:
        """Status and JSON error body when the rejections refuse the raw request ``body``, else None."""
        if self.reject_over_bytes is not None and len(body) > self.reject_over_bytes:
            message = f"request body too large ({len(body)} bytes > limit {self.reject_over_bytes})"
            return 413, _error_json(message)
        # Matched on the bytes as sent: a JSON encoder may escape a non-ASCII marker.
        if self.reject_marker is not None and self.reject_marker.encode() in body:
            return self.reject_status, _error_json(f"simulated rejection: request body contains {self.reject_marker!r}")
        return None

    def error_response(self) -> tuple[int, bytes, str, dict[str, str]]:
        """Status, body, content type and extra headers for the ``http_status`` fault."""
        status = self.http_status if self.http_status is not None else 500
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(self.retry_after))
        if self.http_body is None:
            return status, _error_json(f"simulated upstream error {status}"), JSON, headers
        text = CLOUDFLARE_PAGE if self.http_body == "cloudflare" else self.http_body
        return status, text.encode(), content_type_of(text), headers


_NOT_RESPONSE_FAULTS: Final = {
    "ratio",
    "count",
    "reject_over_bytes",
    "reject_marker",
    "reject_status",
    "only_token",
    "models",
}
_HEALTHY: Final = SimFaults().model_dump(exclude=_NOT_RESPONSE_FAULTS)


def _error_json(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message}})


def content_type_of(text: str) -> str:
    """Guess the content type of a custom error body: HTML, JSON or plain text."""
    stripped = text.lstrip()
    if stripped.startswith("<"):
        return HTML
    try:
        orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return TEXT
    return JSON


def split_error_body(body: bytes, chunks: int) -> list[bytes]:
    """Split an error body into at most ``chunks`` non-empty pieces: its first line alone, then near-equal ones.

    The first line goes alone so that a client's first read of the Cloudflare page
    gets only the doctype, none of the markers that identify the page.
    """
    first = body.find(b"\n") + 1
    if chunks < 2 or not 0 < first < len(body):
        return even_pieces(body, chunks)
    return [body[:first], *even_pieces(body[first:], chunks - 1)]
