"""The OpenAI SDK (sync and async, streamed and not) against a real gateway: limits, stops, usage, refusals, 429."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel

from gateway.simulator import SimFaults, Simulator
from gateway.tokens import shared_counter

Client = TestClient[web.Request, web.Application]
MODEL: Final = "gpt-4-turbo"
MESSAGES: Final[list[Any]] = [{"role": "user", "content": "Tell me a long story"}]
LONG: Final = " ".join(f"Once upon a time number {n}," for n in range(300))
TOOLS: Final[list[Any]] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


class Answer(BaseModel):
    """A structured output the SDK's parse() asks for."""

    city: str


@pytest.fixture(name="sdk")
async def sdk_fixture(gateway: Client) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async SDK client pointed at the gateway, with the SDK's own retries off."""
    sdk = openai.AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="unused", max_retries=0, timeout=10)
    yield sdk
    await sdk.close()


@pytest.fixture(name="sync_sdk")
def sync_sdk_fixture(gateway: Client) -> openai.OpenAI:
    """A sync SDK client (its calls run in a thread: the gateway shares the test's event loop)."""
    return openai.OpenAI(base_url=str(gateway.make_url("/v1")), api_key="unused", max_retries=0, timeout=10)


async def complete(
    sdk: openai.AsyncOpenAI | openai.OpenAI, *, stream: bool, **extra: Any
) -> tuple[str, str | None, Any]:
    """Text, finish reason and usage through the SDK, async or (in a thread) sync."""
    if isinstance(sdk, openai.OpenAI):
        return await asyncio.to_thread(_complete_sync, sdk, stream, extra)
    if not stream:
        done = await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **extra)
        return done.choices[0].message.content or "", done.choices[0].finish_reason, done.usage
    chunks = [
        chunk
        async for chunk in await sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **extra
        )
    ]
    return _joined(chunks)


def _complete_sync(sdk: openai.OpenAI, stream: bool, extra: dict[str, Any]) -> tuple[str, str | None, Any]:
    if not stream:
        done = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, **extra)
        return done.choices[0].message.content or "", done.choices[0].finish_reason, done.usage
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **extra
        )
    )
    return _joined(chunks)


def _joined(chunks: list[Any]) -> tuple[str, str | None, Any]:
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1]
    assert chunks[-1].choices == []
    return text, finish, chunks[-1].usage


MODES: Final = [
    pytest.param("sdk", False, id="async"),
    pytest.param("sdk", True, id="async-stream"),
    pytest.param("sync_sdk", False, id="sync"),
    pytest.param("sync_sdk", True, id="sync-stream"),
]


@pytest.mark.parametrize(("client", "stream"), MODES)
async def test_max_tokens_gives_length(
    sdk: openai.AsyncOpenAI, sync_sdk: openai.OpenAI, sim: Simulator, client: str, stream: bool
) -> None:
    """max_tokens 12: finish_reason 'length' and at most 12 tokens by the gateway's own count (usage says the same)."""
    chosen = sdk if client == "sdk" else sync_sdk
    sim.faults = SimFaults(answer_pieces=tuple(LONG[i : i + 7] for i in range(0, len(LONG), 7)))
    text, finish, usage = await complete(chosen, stream=stream, max_tokens=12)
    assert finish == "length"
    assert shared_counter().count(text) <= 12
    assert usage.completion_tokens == shared_counter().count(text)
    assert text == LONG[: len(text)]


@pytest.mark.parametrize(("client", "stream"), MODES)
async def test_stop_cuts_before_a_split_stop_text(
    sdk: openai.AsyncOpenAI, sync_sdk: openai.OpenAI, sim: Simulator, client: str, stream: bool
) -> None:
    """stop 'THE END' arrives as 'THE E' + 'ND': the text ends right before it, finish_reason 'stop'."""
    chosen = sdk if client == "sdk" else sync_sdk
    sim.faults = SimFaults(answer_pieces=("And they lived happily. THE E", "ND. Credits roll."))
    text, finish, _ = await complete(chosen, stream=stream, stop=["THE END", "Credits"])
    assert (text, finish) == ("And they lived happily. ", "stop")


async def test_usage_is_the_same_streamed_and_not(sdk: openai.AsyncOpenAI, sim: Simulator) -> None:
    """The same prompt and answer: usage on the plain answer equals usage on the stream's final chunk, and is not 0."""
    sim.faults = SimFaults(answer_pieces=("Usage ", "is counted ", "once."))
    _, _, plain = await complete(sdk, stream=False)
    _, _, streamed = await complete(sdk, stream=True)
    assert plain == streamed
    assert plain.prompt_tokens > 0
    assert plain.completion_tokens > 0
    assert plain.total_tokens == plain.prompt_tokens + plain.completion_tokens


async def test_a_429_raises_rate_limit_error(sdk: openai.AsyncOpenAI, sim: Simulator) -> None:
    """Every route answers 429: the SDK raises RateLimitError, Retry-After passed on."""
    sim.faults = SimFaults(http_status=429, retry_after=20)
    with pytest.raises(openai.RateLimitError) as info:
        await sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.code == "upstream_rate_limited"
    assert info.value.response.headers["retry-after"] == "20"


async def test_tools_raise_bad_request_naming_tools(sdk: openai.AsyncOpenAI) -> None:
    """tools: BadRequestError with param 'tools' and a message that says so."""
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert (info.value.code, info.value.param) == ("unsupported_parameter", "tools")
    assert "'tools' is not supported" in info.value.message


async def test_structured_output_parse_fails_loudly(sdk: openai.AsyncOpenAI) -> None:
    """chat.completions.parse(response_format=Model): BadRequestError naming response_format, not a client-side error."""
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Answer)
    assert info.value.param == "response_format"


async def test_an_image_part_is_refused_by_name(sdk: openai.AsyncOpenAI) -> None:
    """An image_url part: BadRequestError unsupported_content naming the message and part."""
    content: list[Any] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert (info.value.code, info.value.param) == ("unsupported_content", "messages.0.content.1")
