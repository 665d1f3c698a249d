"""Helpers for tests that talk to a gateway: settings, request bodies, SSE parsing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.flowgpt.protocol import DEFAULT_MODEL
from gateway.openai_schema import chat_request_body
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.answer import Answer

GatewayFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# Settings every test starts from: the probe is off unless a test turns it on, and
# retries are fast so failure paths take milliseconds.
TEST_DEFAULTS: dict[str, Any] = {
    "probe_enabled": False,
    "retry_backoff_base": 0.001,
    "retry_backoff_max": 0.005,
    "timeout_first_token": 2.0,
    "timeout_idle": 2.0,
    "timeout_total": 5.0,
    "uvloop": False,
}


def make_settings(upstream_url: str, **overrides: Any) -> Settings:
    """Settings for a gateway in front of ``upstream_url``, ignoring the caller's GATEWAY_* env."""
    if overrides.get("upstreams"):
        return Settings(**{**TEST_DEFAULTS, **overrides})  # the routes replace the single upstream
    return Settings(upstream_url=upstream_url, **{**TEST_DEFAULTS, **overrides})


def chat_body(
    content: str = "Hello", *, stream: bool = False, model: str = DEFAULT_MODEL, **extra: Any
) -> dict[str, Any]:
    """A minimal valid chat-completions request, with ``extra`` fields."""
    return {**chat_request_body(content, stream=stream, model=model), **extra}


def sse_events(raw: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]


async def read_all(answer: Answer) -> str:
    """The rest of ``answer`` as one string, read batch by batch as the stream handler reads it."""
    parts: list[str] = []
    while fragments := await answer.next_fragments():
        parts += fragments
    return "".join(parts)
