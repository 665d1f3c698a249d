"""The OpenAI chat-completions wire format: request validation and response objects."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator

from gateway.errors import GatewayError, InvalidRequestError
from gateway.flowgpt.protocol import DEFAULT_MODEL, Message

_TOLERANT = ConfigDict(extra="ignore", strict=True)


def chat_request_body(content: str, *, stream: bool = False, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """A minimal valid request: one user message (what the drill, the benchmark, the soak and the tests send)."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


class TextPart(BaseModel):
    """A text part of a message's content list (the only part type FlowGpt can carry)."""

    model_config = _TOLERANT
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One message; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = _TOLERANT
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def to_flowgpt(self) -> Message:
        """Collapse the content to one string and the role to FlowGpt's three."""
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return Message(role="system" if self.role == "developer" else self.role, content=text)


class ChatCompletionRequest(BaseModel):
    """The fields the gateway honours; unknown fields are ignored like OpenAI's clients expect."""

    model_config = _TOLERANT
    model: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: StrictBool = False
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None

    @model_validator(mode="after")
    def _has_question(self) -> ChatCompletionRequest:
        if all(message.role in ("system", "developer") for message in self.messages):
            raise ValueError("messages must contain at least one user or assistant message")
        return self


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Decode and validate a request body; errors name the offending field."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
    try:
        chat = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(piece) for piece in first["loc"]) or None
        # Union members add their type name to the location; keep the path a client can act on.
        if field:
            field = ".".join(p for p in field.split(".") if p not in ("str", "list[TextPart]", "float", "int"))
        where = f"'{field}'" if field else "request"
        raise InvalidRequestError(f"invalid {where}: {first['msg']}", param=field) from None
    # FlowGpt answers the last message as its question and rejects an empty one. Refuse it here:
    # passed on, the upstream's 400 would be a 502 and a breaker failure any client could cause.
    last = len(chat.messages) - 1
    if not chat.messages[last].to_flowgpt().content:
        param = f"messages.{last}.content"
        raise InvalidRequestError(f"invalid '{param}': the last message must not be empty", param=param)
    return chat


def new_completion_id() -> str:
    """An OpenAI-style id."""
    return "chatcmpl-" + secrets.token_hex(12)


def completion(completion_id: str, model: str, text: str) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object (FlowGpt reports no token usage)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}
        ],
        "system_fingerprint": None,
    }


class ChunkEncoder:
    """Encodes ``chat.completion.chunk`` SSE events; the constant part is built once per stream."""

    def __init__(self, completion_id: str, model: str) -> None:
        created = int(time.time())
        self._head = (
            orjson.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model})[
                :-1
            ]
            + b',"system_fingerprint":null,"choices":[{"index":0,"logprobs":null,"delta":'
        )

    def role(self) -> bytes:
        """The first chunk: announces the assistant role."""
        return self._event(b'{"role":"assistant","content":""}', b"null")

    def content(self, text: str) -> bytes:
        """One text delta."""
        return self._event(b'{"content":' + orjson.dumps(text) + b"}", b"null")

    def stop(self) -> bytes:
        """The last chunk, with the finish reason, followed by ``[DONE]``."""
        return self._event(b"{}", b'"stop"') + b"data: [DONE]\n\n"

    def _event(self, delta: bytes, finish_reason: bytes) -> bytes:
        return b"data: " + self._head + delta + b',"finish_reason":' + finish_reason + b"}]}\n\n"


def error_body(error: GatewayError) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": error.message, "type": error.error_type, "param": error.param, "code": error.code}}


def error_event(error: GatewayError) -> bytes:
    """The one SSE event that ends a stream which failed after it started (no ``[DONE]`` follows)."""
    return b"data: " + orjson.dumps(error_body(error)) + b"\n\n"
