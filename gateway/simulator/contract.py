"""The request contract: what a well-behaved FlowGpt client must send (body and signing headers).

The chat handler checks every request against it; pure functions, so the tests
use the same definition of a valid request.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gateway.flowgpt.protocol import MODELS, authorization_value, signature
from gateway.simulator.options import SimOptions

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
