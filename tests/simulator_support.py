"""Helpers for the simulator's tests (test_simulator_*.py): a FlowGpt request and its answer, NDJSON parsing.

Also the ``sim`` (seeded, overriding conftest's) and ``session`` (no keep-alive) fixtures,
which a test module imports by their function names (``fixture_sim``, ``fixture_session``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, Message, build_body, signed_headers
from gateway.simulator import SimOptions, Simulator, expected_answer

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


@pytest.fixture(name="sim")
async def fixture_sim() -> AsyncIterator[Simulator]:
    """A healthy simulator on a free loopback port."""
    async with Simulator(SimOptions(seed=1)) as sim:
        yield sim


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without keep-alive, so restarts never meet a stale pooled socket."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


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
