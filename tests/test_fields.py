"""The field table: every SDK field has a README row, and each refused field or shape is a 400 naming it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openai.types.chat import completion_create_params

from gateway.fields import BY_NAME, FIELDS, REFUSABLE
from gateway.message_shapes import SHAPES
from gateway.simulator import Simulator
from tests.gateway_support import GatewayFactory, chat_body
from tests.metrics_support import delta, scrape

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"
README: Final = Path(__file__).resolve().parent.parent / "README.md"
WORDS: Final = {"honoured": "honoured", "emulated": "emulated", "ignored": "accepted and ignored", "refused": "refused"}

# A value that asks for something FlowGpt cannot do, per refused field.
ASKING: Final[dict[str, Any]] = {
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "functions": [{"name": "get_weather", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 3,
    "top_p": 0.5,
    "frequency_penalty": 0.5,
    "presence_penalty": -1,
    "logit_bias": {"50256": -100},
    "reasoning_effort": "high",
    "verbosity": "low",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "mp3"},
    "web_search_options": {},
    "moderation": {"mode": "block"},
}
# A value that asks for nothing, per refused field that has one.
HARMLESS: Final[dict[str, Any]] = {
    "tools": [],
    "tool_choice": "none",
    "functions": [],
    "function_call": "none",
    "response_format": {"type": "text"},
    "logprobs": False,
    "top_logprobs": 0,
    "top_p": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0.0,
    "logit_bias": {},
    "reasoning_effort": "none",
    "verbosity": "medium",
    "modalities": ["text"],
}
IGNORED_VALUES: Final[dict[str, Any]] = {
    "user": "u-1",
    "safety_identifier": "hash",
    "metadata": {"k": "v"},
    "store": True,
    "service_tier": "flex",
    "prompt_cache_key": "k",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit"},
    "prediction": {"type": "content", "content": "x"},
    "seed": 7,
    "parallel_tool_calls": True,
}
TOOL_CALL: Final = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
USER: Final = {"role": "user", "content": "Hello"}
# (messages, param) for every refused shape; the last message stays a user question.
SHAPE_CASES: Final = [
    pytest.param([USER, {"role": "assistant", "content": "Sure, "}], "messages.1", id="assistant-prefill"),
    pytest.param(
        [USER, {"role": "assistant", "content": "Sure"}, {"role": "system", "content": "Be brief"}],
        "messages.1",
        id="assistant-prefill-then-system",
    ),
    pytest.param([USER, {"role": "tool", "tool_call_id": "call_1", "content": "42"}, USER], "messages.1", id="tool"),
    pytest.param([USER, {"role": "function", "name": "f", "content": "42"}, USER], "messages.1", id="function"),
    pytest.param(
        [USER, {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}, USER],
        "messages.1.tool_calls",
        id="assistant-tool-calls",
    ),
    pytest.param(
        [USER, {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}, USER],
        "messages.1.function_call",
        id="assistant-function-call",
    ),
    pytest.param([USER, {"role": "assistant", "audio": {"id": "a1"}}, USER], "messages.1.audio", id="assistant-audio"),
    pytest.param(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                ],
            }
        ],
        "messages.0.content.1",
        id="image_url",
    ),
    pytest.param(
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
        "messages.0.content.0",
        id="input_audio",
    ),
    pytest.param(
        [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}], "messages.0.content.0", id="file"
    ),
    pytest.param(
        [USER, {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}, USER],
        "messages.1.content.0",
        id="refusal-part",
    ),
]


def readme_rows(heading: str) -> dict[str, str]:
    """First column to second of the README table whose header row starts with ``heading``."""
    rows: dict[str, str] = {}
    inside = False
    for line in README.read_text().splitlines():
        if line.startswith(f"| {heading} |"):
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        if inside and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1]
    return rows


def sdk_fields() -> set[str]:
    """Every request field the OpenAI SDK's Chat Completions type defines (``stream`` lives in its subtypes)."""
    return set(completion_create_params.CompletionCreateParamsBase.__annotations__) | {"stream"}


def test_every_sdk_field_has_a_readme_row() -> None:
    """A field the installed SDK defines but the README's table lacks fails here, so none slips through."""
    documented = {re.sub(r"^`|`$", "", name) for name in readme_rows("field")}
    assert sdk_fields() - documented == set()


def test_readme_table_is_the_code_table() -> None:
    """The README's field rows say what gateway/fields.py does, field by field, in the same order."""
    rows = readme_rows("field")
    assert list(rows) == [f"`{field.name}`" for field in FIELDS]
    assert [rows[f"`{field.name}`"] for field in FIELDS] == [WORDS[field.treatment] for field in FIELDS]


def test_readme_shapes_are_the_code_shapes() -> None:
    """The README's message-shape rows are gateway/message_shapes.py's, in order."""
    assert readme_rows("message shape or part") == {shape: WORDS[treatment] for shape, treatment, _ in SHAPES}


def test_test_values_cover_every_refused_field() -> None:
    """Each refused field has a value that asks for something here, so the table-driven tests miss none."""
    assert set(ASKING) == set(REFUSABLE)
    assert {name for name, field in BY_NAME.items() if field.treatment == "ignored"} == set(IGNORED_VALUES)


@pytest.mark.parametrize("param", REFUSABLE)
async def test_a_refused_field_is_a_400_naming_it(gateway: Client, sim: Simulator, param: str) -> None:
    """A refused field asking for something: 400 unsupported_parameter, param is the field, nothing sent upstream."""
    response = await gateway.post(CHAT, json=chat_body(**{param: ASKING[param]}))
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["param"], error["type"]) == (
        400,
        "unsupported_parameter",
        param,
        "invalid_request_error",
    )
    assert f"'{param}' is not supported" in error["message"]
    assert sim.stats.requests_total == 0


async def test_values_that_ask_for_nothing_pass(gateway: Client) -> None:
    """tools: [], top_p: 1, logprobs: false and the like are what the gateway does anyway: 200."""
    response = await gateway.post(CHAT, json=chat_body(**HARMLESS))
    assert response.status == 200, await response.text()
    assert "x-gateway-dropped-params" not in response.headers


async def test_ignored_fields_and_nulls_pass(gateway: Client) -> None:
    """The ignored fields, and every refused field set to null, change nothing: 200."""
    nulls = dict.fromkeys(REFUSABLE)
    response = await gateway.post(CHAT, json={**chat_body(), **IGNORED_VALUES, **nulls})
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(("messages", "param"), SHAPE_CASES)
async def test_a_refused_shape_is_a_400_naming_it(
    gateway: Client, sim: Simulator, messages: list[dict[str, Any]], param: str
) -> None:
    """A refused message shape or part: 400 unsupported_content, param names the message (and part)."""
    response = await gateway.post(CHAT, json={**chat_body(), "messages": messages})
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["param"]) == (400, "unsupported_content", param)
    assert "FlowGpt" in error["message"]
    assert sim.stats.requests_total == 0


async def test_text_parts_are_joined_with_a_newline(gateway: Client, sim: Simulator) -> None:
    """Two text parts reach FlowGpt as 'part one\\npart two', not run together."""
    parts = [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]
    response = await gateway.post(CHAT, json={**chat_body(), "messages": [{"role": "user", "content": parts}]})
    assert response.status == 200
    assert sim.stats.last_body is not None
    assert sim.stats.last_body["question"] == "part one\npart two"


async def test_an_assistant_turn_with_null_content_is_an_empty_turn(gateway: Client, sim: Simulator) -> None:
    """An assistant message with content null (and no tool calls) is history, not a validation error."""
    messages = [USER, {"role": "assistant", "content": None}, USER]
    response = await gateway.post(CHAT, json={**chat_body(), "messages": messages})
    assert response.status == 200, await response.text()
    assert sim.stats.last_body is not None
    assert sim.stats.last_body["history"][2] == {"role": "assistant", "content": ""}


async def test_a_refused_turn_keeps_its_refusal_text(gateway: Client, sim: Simulator) -> None:
    """An assistant turn with content null and a refusal reaches FlowGpt as the refusal's text, not an empty turn."""
    messages = [USER, {"role": "assistant", "content": None, "refusal": "I cannot help with that."}, USER]
    response = await gateway.post(CHAT, json={**chat_body(), "messages": messages})
    assert response.status == 200, await response.text()
    assert sim.stats.last_body is not None
    assert sim.stats.last_body["history"][2] == {"role": "assistant", "content": "I cannot help with that."}


async def test_trailing_system_messages_leave_the_question_last(gateway: Client, sim: Simulator) -> None:
    """A system message after the user's: the user's text is the question, the system text joins the system prompt."""
    messages = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "the question"},
        {"role": "developer", "content": "Answer in French"},
    ]
    response = await gateway.post(CHAT, json={**chat_body(), "messages": messages})
    assert response.status == 200, await response.text()
    body = sim.stats.last_body
    assert body is not None
    assert body["question"] == "the question"
    assert body["system"] == "Answer in French"
    assert [turn["content"] for turn in body["history"][1:]] == ["earlier", "ok"]


async def test_drop_params_drops_names_and_counts(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """GATEWAY_DROP_PARAMS: tools and top_p are dropped, named in the header and counted by param."""
    gateway = await make_gateway(drop_params=True)
    before = await scrape(gateway)
    body = chat_body(tools=ASKING["tools"], top_p=0.3, user="u", stream=True)
    response = await gateway.post(CHAT, json=body)
    assert response.status == 200
    assert response.headers["x-gateway-dropped-params"] == "tools,top_p"
    await response.read()
    after = await scrape(gateway)
    assert delta(before, after, "gateway_dropped_params_total", param="tools") == 1
    assert delta(before, after, "gateway_dropped_params_total", param="top_p") == 1
    assert delta(before, after, "gateway_dropped_params_total", param="tool_choice") == 0
    assert sim.stats.last_body is not None
    assert "tools" not in sim.stats.last_body


@pytest.mark.parametrize(
    ("param", "value"),
    [("top_k", 40), ("min_p", 0.1), ("repetition_penalty", 1.2), ("guided_json", {"type": "object"})],
)
async def test_a_field_outside_the_table_is_a_400_naming_it(
    gateway: Client, sim: Simulator, param: str, value: Any
) -> None:
    """A sampling field OpenAI does not define (vLLM's top_k, ...): 400 unsupported_parameter naming it."""
    response = await gateway.post(CHAT, json=chat_body(**{param: value}))
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["param"]) == (400, "unsupported_parameter", param)
    assert param in error["message"]
    assert sim.stats.requests_total == 0


async def test_drop_params_drops_fields_outside_the_table_as_other(make_gateway: GatewayFactory) -> None:
    """GATEWAY_DROP_PARAMS: top_k is dropped, named in the header, and counted under param="other"."""
    gateway = await make_gateway(drop_params=True)
    before = await scrape(gateway)
    response = await gateway.post(CHAT, json={**chat_body(top_k=40), "bad\u00e9 name": 1})
    assert response.status == 200, await response.text()
    assert response.headers["x-gateway-dropped-params"] == "top_k,other"
    after = await scrape(gateway)
    assert delta(before, after, "gateway_dropped_params_total", param="other") == 2


async def test_drop_params_never_drops_message_shapes(make_gateway: GatewayFactory) -> None:
    """Even with GATEWAY_DROP_PARAMS a tool message is a 400: dropping it would change the conversation."""
    gateway = await make_gateway(drop_params=True)
    messages = [USER, {"role": "tool", "tool_call_id": "c", "content": "42"}, USER]
    response = await gateway.post(CHAT, json={**chat_body(), "messages": messages})
    assert (response.status, (await response.json())["error"]["code"]) == (400, "unsupported_content")


async def test_dropped_params_series_exist_at_start(gateway: Client) -> None:
    """Every refusable field's series exists at zero from start-up, and no other label value."""
    samples = await scrape(gateway)
    params = {dict(labels)["param"] for name, labels in samples if name == "gateway_dropped_params_total"}
    assert params == {*REFUSABLE, "other"}
