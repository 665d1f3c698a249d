"""The OpenAI chat-completions wire format: request validation and response objects."""

from __future__ import annotations

import time
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator
from pydantic_core import ErrorDetails, SchemaValidator

from gateway.errors import GatewayError, InvalidRequestError, UnsupportedContentError
from gateway.fields import screen
from gateway.flowgpt.protocol import DEFAULT_MODEL, Message, Role, question_index
from gateway.ids import hex_id
from gateway.message_shapes import screen_messages

_TOLERANT = ConfigDict(extra="ignore", strict=True)
_StopText = Annotated[StrictStr, Field(min_length=1)]
# Union members add their type name to a validation error's location; these are left out of ``param``.
_TYPE_PIECES: Final = frozenset({"str", "int", "float", "bool", "none", "list[TextPart]", "list[str]", "StreamOptions"})
_FLOWGPT_ROLES: Final[dict[str, Role]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def chat_request_body(content: str, *, stream: bool = False, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """A minimal valid request: one user message (what the drill, the benchmark, the soak and the tests send)."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


class TextPart(BaseModel):
    """A text part of a message's content list (the only part type FlowGpt can carry)."""

    model_config = _TOLERANT
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One message; ``developer`` is OpenAI's newer name for ``system``.

    Tool messages, tool calls and non-text parts are refused before this model sees them
    (:mod:`gateway.message_shapes`).
    """

    model_config = _TOLERANT
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    refusal: StrictStr | None = None  # an earlier assistant turn that refused: its text when content is null

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def to_flowgpt(self) -> Message:
        """Collapse the content (or a refused turn's ``refusal``) to one string and the role to FlowGpt's three."""
        content = self.content
        if content is None and self.role == "assistant" and self.refusal:
            content = self.refusal  # the turn said this; an empty turn would misstate the conversation
        text = content if isinstance(content, str) else "\n".join(part.text for part in content or ())
        return Message(_FLOWGPT_ROLES[self.role], text)  # positional: the frozen dataclass's keywords cost more


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` changes anything."""

    model_config = _TOLERANT
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """The fields the gateway honours or emulates; the table's ignored fields pass unread (others were screened)."""

    model_config = _TOLERANT
    model: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: StrictBool = False
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: Annotated[StrictStr, Field(min_length=1)] | Annotated[list[_StopText], Field(max_length=4)] | None = None
    stream_options: StreamOptions | None = None

    @property
    def token_limit(self) -> int | None:
        """The completion's token limit: the smaller of ``max_tokens`` and ``max_completion_tokens``."""
        limits = [limit for limit in (self.max_tokens, self.max_completion_tokens) if limit is not None]
        return min(limits) if limits else None

    @property
    def stop_texts(self) -> tuple[str, ...]:
        """The stop sequences, none, one or up to four."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    @model_validator(mode="after")
    def _has_question(self) -> ChatCompletionRequest:
        if all(message.role in ("system", "developer") for message in self.messages):
            raise ValueError("messages must contain at least one user or assistant message")
        return self


def _without_checks(schema: Any, checks: frozenset[object]) -> tuple[Any, int]:
    """A copy of a core schema with the ``mode="after"`` model validators in ``checks`` left out, and how many were."""
    if isinstance(schema, dict):
        function = schema.get("function")
        if schema.get("type") == "function-after" and isinstance(function, dict) and function.get("function") in checks:
            inner, removed = _without_checks(schema["schema"], checks)
            return inner, removed + 1
        copied: dict[str, Any] = {}
        removed = 0
        for key, value in schema.items():
            copied[key], found = _without_checks(value, checks)
            removed += found
        return copied, removed
    if isinstance(schema, list):
        items = [_without_checks(item, checks) for item in schema]
        return [item for item, _ in items], sum(found for _, found in items)
    return schema, 0


def _unchecked_validator() -> SchemaValidator:
    """``ChatCompletionRequest``'s validator without its two model validators, which cost a Python call per message.

    They only refuse (they return the model unchanged), so ``_question`` checks the same in one loop; whatever
    either refuses is validated again in full, for the error in pydantic's order. The same classes are built.
    Should pydantic lay out its schema otherwise, it is the full validator again: slower, never different.
    """
    checks = frozenset({ChatCompletionRequest._has_question, ChatMessage._content_present})
    schema, removed = _without_checks(ChatCompletionRequest.__pydantic_core_schema__, checks)
    return SchemaValidator(schema if removed == len(checks) else ChatCompletionRequest.__pydantic_core_schema__)


_UNCHECKED: Final = _unchecked_validator()


def _question(messages: list[ChatMessage]) -> int | None:
    """The question's index (as ``question_index``), or None if a model validator would refuse the messages."""
    asked = None
    for index, message in enumerate(messages):
        role = message.role
        if message.content is None and role != "assistant":
            return None  # ChatMessage._content_present
        if role != "system" and role != "developer":
            asked = index
    return asked  # None: ChatCompletionRequest._has_question


def _validated(data: dict[str, Any]) -> tuple[ChatCompletionRequest, int]:
    """The request and its question's index, or ``InvalidRequestError`` naming the first error pydantic reports."""
    try:
        chat: ChatCompletionRequest = _UNCHECKED.validate_python(data)
        asked = _question(chat.messages)
    except ValidationError:
        asked = None
    if asked is not None:
        return chat, asked
    # Refused: the full validation reports it, the model validators' errors in their place among the fields'.
    try:
        chat = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    return chat, question_index(tuple(message.role for message in chat.messages))  # not reached: refused above


def parse_chat_request(raw: bytes, *, drop_params: bool = False) -> tuple[ChatCompletionRequest, tuple[str, ...]]:
    """Decode, screen and validate a request body; errors name the offending field.

    Returns the request and the refused fields dropped (only with ``drop_params``; else they are refused).
    """
    data = decode_body(raw)
    screen_messages(data.get("messages"))
    dropped = screen(data, drop=drop_params)
    chat, asked = _validated(data)
    check_question(chat, asked)
    return chat, dropped


def decode_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``InvalidRequestError`` (code ``invalid_json``)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
    return data


def check_question(chat: ChatCompletionRequest, asked: int) -> None:
    """Refuse a question FlowGpt cannot answer: ``messages[asked]`` is the one it would be sent as."""
    # FlowGpt answers the last message that is not a system message as its question (system
    # messages after it join the system prompt). An assistant message there is a prefill to
    # continue, which FlowGpt cannot do: sent as the question, it would read as the user's words.
    question = chat.messages[asked]
    if question.role == "assistant":
        param = f"messages.{asked}"
        raise UnsupportedContentError(
            f"'{param}' is an assistant message after the last user message (a prefill): "
            "FlowGpt answers a user's question and cannot continue an assistant's text",
            param=param,
        )
    # FlowGpt rejects an empty question. Refuse it here: passed on, the upstream's 400 would be
    # a 502 and a breaker failure any client could cause.
    if not question.to_flowgpt().content:
        param = f"messages.{asked}.content"
        raise InvalidRequestError(f"invalid '{param}': the last user message must not be empty", param=param)


def invalid_request(exc: ValidationError) -> InvalidRequestError:
    """The client's error for a refused body: pydantic's first error, at the path a client can act on."""
    loc, message = _reported(exc.errors(include_url=False))
    # Union members add their type name to the location; keep the path a client can act on.
    field = ".".join(str(piece) for piece in loc if not _is_type_piece(piece)) or None
    where = f"'{field}'" if field else "request"
    return InvalidRequestError(f"invalid {where}: {message}", param=field)


def _is_type_piece(piece: str | int) -> bool:
    """Whether a location piece is a union member's type name, not a field or an index."""
    return isinstance(piece, str) and (
        piece in _TYPE_PIECES or "[" in piece or piece.startswith(("function-", "constrained-"))
    )


def _reported(errors: list[ErrorDetails]) -> tuple[tuple[str | int, ...], str]:
    """The location and message to report: the first error, unless it is one member's of a union.

    A string-or-list field given a list reports the list member's error (``stop`` with five
    strings: "at most 4", not "a valid string"); given neither, the members' messages are joined.
    """
    first = errors[0]
    loc = tuple(first["loc"])
    if not loc or not _is_type_piece(loc[-1]):
        return loc, first["msg"]
    union = loc[:-1]
    members = [e for e in errors if len(e["loc"]) > len(union) and tuple(e["loc"][: len(union)]) == union]
    if isinstance(first["input"], list):
        for error in members:
            if str(error["loc"][len(union)]).startswith("list["):
                return tuple(error["loc"]), error["msg"]
    level = [e["msg"] for e in members if len(e["loc"]) == len(union) + 1]
    if len(level) > 1 and all(msg.startswith("Input should be ") for msg in level):
        return loc, " or ".join([level[0], *(msg.removeprefix("Input should be ") for msg in level[1:])])
    return loc, first["msg"]


def new_completion_id() -> str:
    """An OpenAI-style id."""
    return "chatcmpl-" + hex_id(12)


def usage(prompt: int, completion: int) -> dict[str, int]:
    """OpenAI's ``usage`` object (the gateway's own cl100k_base counts: FlowGpt reports none)."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(
    completion_id: str,
    model: str,
    text: str,
    *,
    finish_reason: str = "stop",
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "system_fingerprint": None,
    }
    if usage is not None:
        body["usage"] = usage
    return body


class ChunkEncoder:
    """Encodes ``chat.completion.chunk`` SSE events; the constant part is built once per stream."""

    def __init__(self, completion_id: str, model: str) -> None:
        created = int(time.time())
        self._prefix = orjson.dumps(
            {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        )[:-1]
        self._head = self._prefix + b',"system_fingerprint":null,"choices":[{"index":0,"logprobs":null,"delta":'

    def role(self) -> bytes:
        """The first chunk: announces the assistant role."""
        return self._event(b'{"role":"assistant","content":""}', b"null")

    def content(self, text: str) -> bytes:
        """One text delta."""
        return self._event(b'{"content":' + orjson.dumps(text) + b"}", b"null")

    def stop(self, finish_reason: str = "stop", usage: dict[str, int] | None = None) -> bytes:
        """The last chunk with the finish reason, the usage chunk (empty ``choices``) if asked for, and ``[DONE]``."""
        end = self._event(b"{}", orjson.dumps(finish_reason))
        if usage is not None:
            end += (
                b"data: "
                + self._prefix
                + b',"system_fingerprint":null,"choices":[],"usage":'
                + orjson.dumps(usage)
                + b"}\n\n"
            )
        return end + b"data: [DONE]\n\n"

    def _event(self, delta: bytes, finish_reason: bytes) -> bytes:
        return b"data: " + self._head + delta + b',"finish_reason":' + finish_reason + b"}]}\n\n"


def error_body(error: GatewayError) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": error.message, "type": error.error_type, "param": error.param, "code": error.code}}


def error_event(error: GatewayError) -> bytes:
    """The one SSE event that ends a stream which failed after it started (no ``[DONE]`` follows)."""
    return b"data: " + orjson.dumps(error_body(error)) + b"\n\n"
