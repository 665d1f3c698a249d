"""Helpers for the simulator's tests (test_simulator_*.py): a FlowGpt request and its answer, NDJSON parsing.

The ``sim`` and ``session`` fixtures these tests use live in conftest.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, Message, build_body, signed_headers
from gateway.simulator import Simulator, expected_answer

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


def _bad_signature() -> dict[str, str]:
    """Signed headers whose signature is wrong."""
    headers = signed_headers(ANONYMOUS_TOKEN)
    headers["x-signature"] = "0" * 32
    return headers


async def get_json(session: aiohttp.ClientSession, url: str, route: str | None = None) -> tuple[int, Any]:
    """GET an admin URL (with ``?route=`` when given) and return status and JSON."""
    params = None if route is None else {"route": route}
    async with session.get(url, params=params) as resp:
        return resp.status, await resp.json()


async def stop_cuts(sim: Simulator, resp: aiohttp.ClientResponse) -> None:
    """``sim.stop()`` returns at once and the open response ends cut, so no client takes a prefix for the whole."""
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 0.5
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
