"""gateway/simulator/contract.py: the request contract the chat endpoint enforces (signing headers, body).

Missing, wrong or stale signing headers get 401 (or pass when the check is off);
a body field of the wrong type or value, a missing one or a body that is not a
JSON object gets 400 naming what is wrong, over real loopback sockets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, signed_headers
from gateway.simulator import SimOptions, Simulator
from tests.simulator_support import ANSWER, _bad_signature, chat_body, parse, post_chat, text_of


def _missing(name: str) -> Callable[[], dict[str, str]]:
    def build() -> dict[str, str]:
        headers = signed_headers(ANONYMOUS_TOKEN)
        del headers[name]
        return headers

    return build


@pytest.mark.parametrize(
    ("make_headers", "reason"),
    [
        (_bad_signature, "invalid signature"),
        (lambda: signed_headers("some-other-token"), "invalid token"),
        (lambda: signed_headers(ANONYMOUS_TOKEN, now=time.time() - 1000), "stale x-timestamp"),
        (_missing("x-nonce"), "missing header x-nonce"),
        (_missing("x-signature"), "missing header x-signature"),
        (_missing("x-timestamp"), "missing header x-timestamp"),
        (_missing("x-flow-device-id"), "missing header x-flow-device-id"),
        (_missing("Authorization"), "missing header Authorization"),
    ],
)
async def test_bad_signing_is_401(
    sim: Simulator,
    session: aiohttp.ClientSession,
    make_headers: Callable[[], dict[str, str]],
    reason: str,
) -> None:
    """Missing, wrong or stale signing headers get 401 with a message saying what is wrong."""
    status, _, raw = await post_chat(session, sim, headers=make_headers())
    assert status == 401
    assert reason in json.loads(raw)["message"]
    assert sim.stats.responses_by_status == {401: 1}


async def test_signature_check_can_be_disabled(session: aiohttp.ClientSession) -> None:
    """With check_signature=False an unsigned request is answered."""
    async with Simulator(SimOptions(check_signature=False)) as sim:
        status, _, raw = await post_chat(session, sim, headers={"X-Nothing": "1"})
    assert status == 200
    assert text_of(parse(raw)[0]) == ANSWER


async def test_custom_token_is_required(session: aiohttp.ClientSession) -> None:
    """A simulator with a real token accepts only that bearer token."""
    async with Simulator(SimOptions(token="s3cret")) as sim:
        assert (await post_chat(session, sim))[0] == 401
        assert (await post_chat(session, sim, headers=signed_headers("s3cret")))[0] == 200


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("model", "gpt-9", "model"),
        ("question", "", "question"),
        ("question", 5, "question"),
        ("history", "none", "history"),
        ("history", [{"role": "system", "content": "x"}], "history.0.role"),
        ("history", [{"role": "user"}], "history.0.content"),
        ("system", None, "system"),
        ("temperature", 2.5, "temperature"),
        ("temperature", "0.7", "temperature"),
        ("promptId", "model-gpt-3.5-turbo", "promptId"),
        ("nsfw", 0, "nsfw"),
        ("generateImage", "false", "generateImage"),
        ("generateAudio", None, "generateAudio"),
        ("documentIds", {}, "documentIds"),
        ("chatFileDocumentIds", "x", "chatFileDocumentIds"),
    ],
)
async def test_invalid_body_field_is_400_naming_it(
    sim: Simulator, session: aiohttp.ClientSession, field: str, value: Any, named: str
) -> None:
    """A body field with a wrong type or value gets 400 whose message names the field."""
    body = chat_body() | {field: value}
    status, _, raw = await post_chat(session, sim, body=body)
    assert status == 400
    error = json.loads(raw)
    assert f"'{named}'" in error["message"]
    assert error["field"] == named


async def test_missing_body_field_is_400(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """A body without a protocol field gets 400 naming it."""
    body = chat_body()
    del body["chatFileDocumentIds"]
    status, _, raw = await post_chat(session, sim, body=body)
    assert status == 400
    assert "'chatFileDocumentIds'" in json.loads(raw)["message"]


@pytest.mark.parametrize(("payload", "reason"), [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object")])
async def test_malformed_body_is_400(
    sim: Simulator, session: aiohttp.ClientSession, payload: bytes, reason: str
) -> None:
    """A body that is not a JSON object gets 400."""
    async with session.post(sim.url, data=payload, headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        assert resp.status == 400
        assert reason in (await resp.json())["message"]
