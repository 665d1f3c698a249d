"""parse_chat_request's cheaper path gives what the plain one gave: the same request, the same drops, the same error.

The reference below takes the plain path: every field looked for by name (``screen_each``), the full
pydantic validation with its model validators, and ``question_index``; hypothesis sends both every
shape of body, valid or not, with and without ``drop_params``.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from gateway import openai_schema
from gateway.errors import GatewayError, InvalidRequestError
from gateway.fields import screen, screen_each
from gateway.flowgpt.protocol import Message, question_index
from gateway.message_shapes import screen_messages
from gateway.openai_schema import (
    ChatCompletionRequest,
    ChatMessage,
    chat_request_body,
    check_question,
    decode_body,
    invalid_request,
    parse_chat_request,
)


def _reference_parse(raw: bytes, *, drop_params: bool) -> tuple[ChatCompletionRequest, tuple[str, ...]]:
    """The parse without its shortcuts: the screens' table walk and the full model, both model validators run."""
    data = decode_body(raw)
    screen_messages(data.get("messages"))
    dropped = screen_each(data, drop=drop_params)
    try:
        chat = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    check_question(chat, question_index(tuple(message.role for message in chat.messages)))
    return chat, dropped


def _outcome(parse: Any, raw: bytes, drop_params: bool) -> Any:
    """What a parse gives, comparable: the request in full (with the fields set, nested), or the error in full."""
    try:
        chat, dropped = parse(raw, drop_params=drop_params)
    except GatewayError as exc:
        return ("error", type(exc), exc.message, exc.param, exc.code, exc.error_type, exc.status)
    return ("ok", _described(chat), dropped)


def _described(value: Any) -> Any:
    if isinstance(value, BaseModel):
        fields = {name: _described(getattr(value, name)) for name in type(value).model_fields}
        return (type(value), fields, frozenset(value.model_fields_set), value.__pydantic_extra__)
    if isinstance(value, list):
        return [_described(item) for item in value]
    return (type(value), value)


TOOL_CALL: Final = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
ABSENT: Final = object()
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "bad", 1, None, ABSENT])
PARTS = st.lists(
    st.sampled_from(
        [
            {"type": "text", "text": "a"},
            {"type": "text", "text": ""},
            {"type": "text"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "refusal", "refusal": "no"},
            {"text": "a"},
            "a",
            {"type": 3},
        ]
    ),
    max_size=3,
)
CONTENTS = st.sampled_from(["Hello", "", " ", None, 5, ["x"], ABSENT]) | PARTS
MESSAGE = st.fixed_dictionaries(
    {"role": ROLES, "content": CONTENTS},
    optional={
        "refusal": st.sampled_from(["I can't", "", None, 3]),
        "name": st.sampled_from(["bob", 1]),
        "tool_calls": st.sampled_from([[], [TOOL_CALL], None]),
        "function_call": st.sampled_from([None, {"name": "f"}]),
        "audio": st.sampled_from([None, {}, {"id": "a"}]),
    },
).map(lambda message: {key: value for key, value in message.items() if value is not ABSENT})
MESSAGES: st.SearchStrategy[Any] = st.lists(MESSAGE | st.sampled_from(["hi", 1, None]), max_size=4) | st.sampled_from(
    ["x", None, {}]
)
FIELDS = {
    "model": st.sampled_from(["gpt-3.5-turbo", "", "m" * 201, "m" * 200, 3, None]),
    "messages": MESSAGES,
    "stream": st.sampled_from([True, False, "yes", 1, None]),
    "temperature": st.sampled_from([0, 0.5, 2, 2.5, -1, "x", True, None]),
    "n": st.sampled_from([1, 2, 0, True, 1.0, None]),
    "max_tokens": st.sampled_from([1, 0, 5, "5", 1.5, None]),
    "max_completion_tokens": st.sampled_from([1, 0, 7, None]),
    "stop": st.sampled_from(["x", "", ["a"], ["a"] * 5, [""], ["a", 1], 3, [], None]),
    "stream_options": st.sampled_from([{"include_usage": True}, {}, {"include_usage": "x"}, {"x": 1}, 1, None]),
    "tools": st.sampled_from([[], [{"type": "function"}], None]),
    "tool_choice": st.sampled_from(["none", "auto", None]),
    "top_p": st.sampled_from([1, 1.0, 0.5, True, None]),
    "logprobs": st.sampled_from([False, True, 0]),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
    "user": st.sampled_from(["u", 1]),
    "metadata": st.sampled_from([{"k": "v"}, None]),
    "seed": st.just(7),
    "top_k": st.just(5),
    "weird name!": st.just(1),
}
# Mostly valid: a model, messages of the four roles, the honoured fields (some values invalid), passing values.
PLAIN_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "user", "assistant"]),
        "content": st.sampled_from(
            [
                *("Hello", "Hello", "Hello", "", None, ABSENT, []),
                [{"type": "text", "text": "a"}],
                [{"type": "text", "text": ""}],
                [{"type": "text", "text": ""}, {"type": "text", "text": ""}],
            ]
        ),
    },
    optional={"refusal": st.sampled_from(["I can't", "", None]), "name": st.just("bob")},
).map(lambda message: {key: value for key, value in message.items() if value is not ABSENT})
NEAR_VALID = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["gpt-3.5-turbo", "gpt-3.5-turbo", "gpt-3.5-turbo", ""]),
        "messages": st.lists(PLAIN_MESSAGE, min_size=1, max_size=5) | st.lists(PLAIN_MESSAGE | MESSAGE, max_size=5),
    },
    optional={
        **{name: FIELDS[name] for name in ("stream", "temperature", "n", "max_tokens", "max_completion_tokens")},
        **{name: FIELDS[name] for name in ("stop", "stream_options", "user", "metadata", "seed")},
        "tools": st.just([]),
        "top_p": st.sampled_from([1, 1, 1, 0.5]),
    },
)
BODIES = st.fixed_dictionaries({}, optional=FIELDS) | NEAR_VALID


@settings(max_examples=1500, deadline=None)
@given(body=BODIES, drop_params=st.booleans())
def test_any_body_gives_what_the_plain_path_gave(body: dict[str, Any], drop_params: bool) -> None:
    """Valid or not, every body: the same request (types, values, fields set) or the same error, with the same drops."""
    raw = orjson.dumps(body)
    assert _outcome(parse_chat_request, raw, drop_params) == _outcome(_reference_parse, raw, drop_params)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=5), temperature=FIELDS["temperature"])
def test_messages_refused_by_a_model_validator_report_the_same_first_error(
    messages: list[dict[str, Any]], temperature: Any
) -> None:
    """The model validators' refusals (no content, no question) beside field errors: the first reported is the same."""
    raw = orjson.dumps({"model": "m", "messages": messages, "temperature": temperature})
    assert _outcome(parse_chat_request, raw, False) == _outcome(_reference_parse, raw, False)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user"}], "invalid 'messages.0': Value error, a user message needs content"),
        ([{"role": "system", "content": "s"}], "invalid request: Value error, messages must contain at least one"),
        ([{"role": "system", "content": None}, {"role": "user", "content": "q"}], "a system message needs content"),
    ],
)
def test_the_model_validators_still_refuse(messages: list[dict[str, Any]], message: str) -> None:
    """What the model validators refuse is refused, with their words."""
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(orjson.dumps({"model": "m", "messages": messages}))
    assert message in caught.value.message


def test_the_validator_without_model_validators_is_built() -> None:
    """The cheaper validator is in use (not the full one it falls back to if pydantic's schema layout changed)."""
    chat = openai_schema._UNCHECKED.validate_python({"model": "m", "messages": [{"role": "system"}]})
    assert type(chat) is ChatCompletionRequest
    assert type(chat.messages[0]) is ChatMessage


def test_the_benchmark_body_is_parsed() -> None:
    """The benchmark's body: the request, nothing dropped, and its one message as FlowGpt's."""
    chat, dropped = parse_chat_request(orjson.dumps(chat_request_body("Hello, how are you today?")))
    assert dropped == ()
    assert chat == ChatCompletionRequest.model_validate(chat_request_body("Hello, how are you today?"))
    assert [m.to_flowgpt() for m in chat.messages] == [Message(role="user", content="Hello, how are you today?")]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "user", "content": "q"}, Message("user", "q")),
        ({"role": "developer", "content": "d"}, Message("system", "d")),
        (
            {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            Message("system", "a\nb"),
        ),
        ({"role": "assistant", "content": None, "refusal": "I can't"}, Message("assistant", "I can't")),
        ({"role": "assistant", "content": "said", "refusal": "I can't"}, Message("assistant", "said")),
        ({"role": "assistant", "content": None}, Message("assistant", "")),
    ],
)
def test_to_flowgpt_collapses_content_and_roles(message: dict[str, Any], expected: Message) -> None:
    """Text parts join with a newline, a refused turn keeps its refusal, developer becomes system."""
    assert ChatMessage.model_validate(message).to_flowgpt() == expected


@settings(max_examples=500, deadline=None)
@given(body=BODIES, drop=st.booleans())
def test_screens_are_unchanged(body: dict[str, Any], drop: bool) -> None:
    """screen's shortcut: the same drops, the same data left and the same error as the walk of the table."""

    def outcome(screen_fn: Any, data: dict[str, Any]) -> Any:
        try:
            return ("ok", screen_fn(data, drop=drop), data)
        except GatewayError as exc:
            return ("error", type(exc), exc.message, exc.param)

    assert outcome(screen, orjson.loads(orjson.dumps(body))) == outcome(screen_each, orjson.loads(orjson.dumps(body)))
