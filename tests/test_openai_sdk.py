"""The official OpenAI Python SDK works against the gateway unchanged, errors included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.simulator import SimFaults, Simulator, expected_answer
from tests.gateway_support import GatewayFactory

Client = TestClient[web.Request, web.Application]


@pytest.fixture(name="sdk")
async def sdk_fixture(gateway: Client) -> AsyncIterator[openai.AsyncOpenAI]:
    """An SDK client pointed at the gateway, with the SDK's own retries off."""
    sdk = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="unused", max_retries=0, timeout=10)
    yield sdk
    await sdk.close()


async def test_sdk_non_streaming(sdk: openai.AsyncOpenAI) -> None:
    """chat.completions.create returns the simulator's answer as a typed object."""
    completion = await sdk.chat.completions.create(
        model="gpt-4-turbo", messages=[{"role": "user", "content": "SDK hello"}]
    )
    assert completion.choices[0].message.content == expected_answer("gpt-4-turbo", "SDK hello")
    assert completion.choices[0].finish_reason == "stop"


async def test_sdk_streaming(sdk: openai.AsyncOpenAI) -> None:
    """Streaming through the SDK yields the same text and a stop finish reason."""
    stream = await sdk.chat.completions.create(
        model="gpt-4-turbo", messages=[{"role": "user", "content": "SDK stream"}], stream=True
    )
    pieces: list[str] = []
    finish: list[str | None] = []
    async for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        finish.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == expected_answer("gpt-4-turbo", "SDK stream")
    assert finish[-1] == "stop"


async def test_sdk_models(sdk: openai.AsyncOpenAI) -> None:
    """models.list and models.retrieve parse."""
    ids = [model.id async for model in sdk.models.list()]
    assert "claude-v2" in ids
    assert (await sdk.models.retrieve("gemini")).id == "gemini"


async def test_sdk_raises_its_own_error_types(sdk: openai.AsyncOpenAI, sim: Simulator) -> None:
    """Gateway errors surface as the SDK's NotFoundError, BadRequestError and InternalServerError."""
    with pytest.raises(openai.NotFoundError) as not_found:
        await sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert bad.value.param == "temperature"
    sim.faults = SimFaults(http_status=500)
    with pytest.raises(openai.InternalServerError) as upstream:
        await sdk.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "x"}])
    assert upstream.value.code == "upstream_http_status"


async def test_sdk_mid_stream_error(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A stream that breaks raises the SDK's APIError after the text received so far."""
    gateway = await make_gateway()
    sdk = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="unused", max_retries=0)
    sim.faults = SimFaults(reset_after=2)
    received: list[str] = []
    try:
        stream = await sdk.chat.completions.create(
            model="gpt-3.5-turbo", messages=[{"role": "user", "content": "a long question here"}], stream=True
        )
        with pytest.raises(openai.APIError, match="broke"):  # noqa: PT012 - the error arrives mid-iteration
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    finally:
        await sdk.close()
    assert "".join(received)
