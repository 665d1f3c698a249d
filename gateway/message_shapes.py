"""What the gateway does with each message shape and content part: the second half of the README's table.

FlowGpt carries a system prompt and turns of plain text. A tool result, an assistant turn
that called tools, and any content part that is not text are refused by name, with
``param`` pointing at the message (and part), before the request is validated field by
field: a client should learn that the gateway cannot carry them, not that a string was
expected. These are never dropped, even with ``GATEWAY_DROP_PARAMS``: leaving out part of
a conversation changes what it asks.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.errors import UnsupportedContentError
from gateway.fields import Treatment

# (shape, treatment, reason): the rows the README shows, checked by tests/test_fields.py.
SHAPES: Final[tuple[tuple[str, Treatment, str], ...]] = (
    ("system / developer message, string content", "honoured", "FlowGpt's system prompt (several are joined)"),
    ("user / assistant message, string content", "honoured", "the question and the history"),
    ("content as a list of text parts", "emulated", "the parts are joined with a newline"),
    ("message `name`", "ignored", "a participant label; FlowGpt has none, and the text is unchanged"),
    (
        "system / developer message after the last user message",
        "honoured",
        "joined into the system prompt; the user message before it stays the question",
    ),
    (
        "assistant message after the last user message (a prefill)",
        "refused",
        "FlowGpt answers a user's question; it cannot continue an assistant's text",
    ),
    ("assistant message with `content: null`", "honoured", "an empty turn (the last user message must not be empty)"),
    ("assistant `refusal`", "honoured", "the turn's text when its content is null; ignored beside content"),
    ("`tool` or `function` message", "refused", "FlowGpt cannot carry tool results"),
    ("assistant `tool_calls` or `function_call`", "refused", "FlowGpt cannot call tools"),
    ("assistant `audio`", "refused", "FlowGpt takes text only"),
    ("`image_url` part", "refused", "FlowGpt takes text only"),
    ("`input_audio` part", "refused", "FlowGpt takes text only"),
    ("`file` part", "refused", "FlowGpt takes text only"),
    ("`refusal` part, any other part type", "refused", "FlowGpt takes text parts only"),
)
_TOOL_ROLES: Final = frozenset({"tool", "function"})
_ASSISTANT_ONLY: Final = ("tool_calls", "function_call", "audio")
_ASSISTANT_KEYS: Final = frozenset(_ASSISTANT_ONLY)


def screen_messages(messages: Any) -> None:
    """Raise ``UnsupportedContentError`` for the first message or part FlowGpt cannot carry.

    Anything not shaped like a message list is left to validation.
    """
    if not isinstance(messages, list):
        return
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if isinstance(role, str) and role in _TOOL_ROLES:
            param = f"messages.{index}"
            raise UnsupportedContentError(
                f"'{param}' has role '{role}': FlowGpt cannot carry tool results", param=param
            )
        # Most messages have none of these keys: one set operation, not three look-ups.
        if not _ASSISTANT_KEYS.isdisjoint(message):
            _screen_assistant_only(index, message)
        content = message.get("content")
        if isinstance(content, list):
            _screen_parts(index, content)


def _screen_assistant_only(index: int, message: dict[str, Any]) -> None:
    for key in _ASSISTANT_ONLY:
        if message.get(key):
            what = "audio" if key == "audio" else "tool calls"
            param = f"messages.{index}.{key}"
            raise UnsupportedContentError(f"'{param}' is not supported: FlowGpt cannot carry {what}", param=param)


def _screen_parts(index: int, parts: list[Any]) -> None:
    for number, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(kind, str) and kind != "text":
            param = f"messages.{index}.content.{number}"
            raise UnsupportedContentError(
                f"'{param}' is a '{kind[:40]}' part: FlowGpt takes text parts only", param=param
            )
