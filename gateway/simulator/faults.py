"""The simulator's contract: its options and faults, the bytes it sends, what it accepts.

Everything here is pure data and small functions (no I/O), so the HTTP layer, the
CLI and the tests share one definition of each fault, each canned answer and of a
valid request.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterator, Mapping
from functools import cached_property, lru_cache
from typing import Any, Final, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, MODELS, authorization_value, signature
from gateway.flowgpt.status import CLOUDFLARE_MARKERS

NDJSON: Final = "application/x-ndjson"
HTML: Final = "text/html; charset=utf-8"
JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"

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
    > ``empty_stream`` > a stream shaped by ``answer_bytes``, ``slow_first_token``,
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
    stall_after: int | None = Field(default=None, ge=0)
    reset_after: int | None = Field(default=None, ge=0)
    garbage_ratio: float = Field(default=0.0, ge=0, le=1)
    html_200: bool = False
    empty_stream: bool = False
    ratio: float = Field(default=1.0, ge=0, le=1)
    count: int | None = Field(default=None, ge=1)  # fault this many requests, then heal by itself

    @cached_property
    def active(self) -> bool:
        """True when any fault is set (``ratio``, ``count``, ``reject_status`` alone change nothing); cached."""
        return self.reject_over_bytes is not None or self.reject_marker is not None or self.shapes_responses

    @cached_property
    def shapes_responses(self) -> bool:
        """True when a fault other than the rejections is set: the ones ``ratio`` draws for."""
        return self.model_dump(exclude=_NOT_RESPONSE_FAULTS) != _HEALTHY

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


_NOT_RESPONSE_FAULTS: Final = {"ratio", "count", "reject_over_bytes", "reject_marker", "reject_status"}
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


class SimOptions(BaseModel):
    """How a healthy simulator behaves (answer shape, pacing, request checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    chunks: int = Field(default=8, ge=1)
    chunk_delay: float = Field(default=0.0, ge=0)
    token: str = ANONYMOUS_TOKEN
    check_signature: bool = True
    max_clock_skew: float = Field(default=300.0, ge=0)
    seed: int | None = None
    meta_events: bool = True
    # Distinct routes served, the default one included (see routes.py); capped so
    # that even a generous setting keeps the per-route state small.
    max_routes: int = Field(default=64, ge=1, le=1024)


def expected_answer(model: str, question: str) -> str:
    """The answer the simulator streams: it echoes both, proving the request arrived intact."""
    return f"[{model}] You said: {question}"


def split_answer(answer: str, chunks: int) -> list[str]:
    """Split ``answer`` into at most ``chunks`` non-empty pieces of near-equal length."""
    return _even_pieces(answer, chunks)


def split_error_body(body: bytes, chunks: int) -> list[bytes]:
    """Split an error body into at most ``chunks`` non-empty pieces: its first line alone, then near-equal ones.

    The first line goes alone so that a client's first read of the Cloudflare page
    gets only the doctype, none of the markers that identify the page.
    """
    first = body.find(b"\n") + 1
    if chunks < 2 or not 0 < first < len(body):
        return _even_pieces(body, chunks)
    return [body[:first], *_even_pieces(body[first:], chunks - 1)]


_Seq = TypeVar("_Seq", str, bytes)


def _even_pieces(data: _Seq, chunks: int) -> list[_Seq]:
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


# The request contract: what a well-behaved FlowGpt client must send.

_SIGNED_HEADERS: Final = ("Authorization", "x-nonce", "x-timestamp", "x-signature", "x-flow-device-id")


class _Turn(BaseModel):
    model_config = ConfigDict(strict=True)

    # build_body never puts system messages in the history, so one here is a client bug.
    role: Literal["user", "assistant"]
    content: str


class ChatBody(BaseModel):
    """The chat request body; strict types catch a client that sends ``"0.7"`` or ``0``."""

    # Unknown extra fields are ignored, as a tolerant production API would.
    model_config = ConfigDict(strict=True)

    model: str
    question: str = Field(min_length=1)
    history: list[_Turn]
    system: str
    temperature: float = Field(ge=0, le=2)
    promptId: str
    nsfw: bool
    generateImage: bool
    generateAudio: bool
    documentIds: list[Any]
    chatFileDocumentIds: list[Any]

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}")
        return value

    @field_validator("promptId")
    @classmethod
    def _matches_model(cls, value: str, info: ValidationInfo) -> str:
        model = info.data.get("model")
        if model is not None and value != f"model-{model}":
            raise ValueError(f"must be 'model-{model}'")
        return value


def describe_error(exc: ValidationError) -> tuple[str, str]:
    """The first problem of ``exc`` as (field path, message naming that field)."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    if not where:
        return "", error["msg"]
    return where, f"invalid field '{where}': {error['msg']}"


def _same(given: str, expected: str) -> bool:
    # Constant-time; compare_digest refuses non-ASCII str and aiohttp may hand us
    # undecodable header bytes as surrogates, so compare the raw bytes.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def auth_problem(headers: Mapping[str, str], options: SimOptions, now: float) -> str | None:
    """Why a request's signing headers are unacceptable, or None when they are fine."""
    for name in _SIGNED_HEADERS:
        if not headers.get(name):
            return f"missing header {name}"
    auth, nonce, timestamp = headers["Authorization"], headers["x-nonce"], headers["x-timestamp"]
    if not _same(auth, authorization_value(options.token)):
        return "invalid token"
    if not (timestamp.isascii() and timestamp.isdigit()):
        return "x-timestamp must be unix seconds"
    if not nonce.isascii():
        return "x-nonce must be ASCII"
    if not _same(headers["x-signature"], signature(timestamp, nonce, auth)):
        return "invalid signature"
    if abs(now - int(timestamp)) > options.max_clock_skew:
        return "stale x-timestamp (outside the allowed clock skew)"
    return None
