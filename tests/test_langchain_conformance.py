"""langchain-openai's ChatOpenAI against a real gateway: tools and structured output fail loudly, max_tokens holds."""

from __future__ import annotations

from typing import Final

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from gateway.simulator import SimFaults, Simulator
from gateway.tokens import shared_counter

Client = TestClient[web.Request, web.Application]
LONG: Final = " ".join(f"chapter {n} begins," for n in range(200))


class Weather(BaseModel):
    """A structured output LangChain asks for."""

    city: str
    degrees: float


def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny in {city}"


@pytest.fixture(name="llm")
def llm_fixture(gateway: Client) -> ChatOpenAI:
    """ChatOpenAI pointed at the gateway, its retries off."""
    return ChatOpenAI(
        model="gpt-4-turbo", base_url=str(gateway.make_url("/v1")), api_key="unused", max_retries=0, timeout=10
    )


async def test_bind_tools_fails_with_the_gateways_message(llm: ChatOpenAI) -> None:
    """bind_tools(...).ainvoke raises BadRequestError saying 'tools' is not supported (it used to answer without calls)."""
    with pytest.raises(openai.BadRequestError) as info:
        await llm.bind_tools([get_weather]).ainvoke("What is the weather in Paris?")
    assert info.value.param == "tools"
    assert "'tools' is not supported" in info.value.message


@pytest.mark.parametrize(
    ("method", "param"),
    [("function_calling", "tools"), ("json_mode", "response_format"), ("json_schema", "response_format")],
)
async def test_with_structured_output_fails_with_the_gateways_message(llm: ChatOpenAI, method: str, param: str) -> None:
    """with_structured_output(...).ainvoke, each method, raises BadRequestError naming the field (it used to return None)."""
    llm = llm.model_copy(update={"model_name": "gpt-4o"})  # a model LangChain allows json_schema for
    with pytest.raises(openai.BadRequestError) as info:
        await llm.with_structured_output(Weather, method=method).ainvoke("Weather in Paris as JSON")  # type: ignore[arg-type]
    assert info.value.param == param
    assert "is not supported" in info.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
async def test_max_tokens_is_honoured(gateway: Client, sim: Simulator, stream: bool) -> None:
    """max_tokens 6: at most 6 tokens, finish_reason length, and usage that says so."""
    sim.faults = SimFaults(answer_pieces=tuple(LONG[i : i + 9] for i in range(0, len(LONG), 9)))
    llm = ChatOpenAI(
        model="gpt-4-turbo",
        base_url=str(gateway.make_url("/v1")),
        api_key="unused",
        max_retries=0,
        max_tokens=6,
        stream_usage=True,
    )
    message: BaseMessage
    if stream:
        chunks = [chunk async for chunk in llm.astream("Tell a long story")]
        whole = chunks[0]
        for chunk in chunks[1:]:
            whole = whole + chunk
        message = whole
    else:
        message = await llm.ainvoke("Tell a long story")
    assert isinstance(message, AIMessage)
    text = str(message.content)
    assert shared_counter().count(text) <= 6
    assert message.response_metadata["finish_reason"] == "length"
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == shared_counter().count(text)
    assert message.usage_metadata["input_tokens"] > 0
