"""The FlowGpt wire protocol: endpoint, models, request signing, headers and body.

Everything here is pure (no I/O) so the client, the simulator and the tests all
share one definition of what a valid request looks like.
"""

from __future__ import annotations

import hashlib
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.ids import hex_id, random_bytes

DEFAULT_UPSTREAM_URL: Final = "https://prod-backend-k8s.flowgpt.com/v3/chat-anonymous"
UPSTREAM_PATH: Final = "/v3/chat-anonymous"
ANONYMOUS_TOKEN: Final = "null"  # noqa: S105 - FlowGpt's anonymous endpoint expects the literal "Bearer null"

DEFAULT_MODEL: Final = "gpt-3.5-turbo"
MODELS: Final[tuple[str, ...]] = (
    "gpt-3.5-turbo",
    "gpt-3.5-long",
    "gpt-4-turbo",
    "google-gemini",
    "claude-instant",
    "claude-v1",
    "claude-v2",
    "llama2-13b",
    "mythalion-13b",
    "pygmalion-13b",
    "chronos-hermes-13b",
    "Mixtral-8x7B",
    "Dolphin-2.6-8x7B",
)
MODEL_ALIASES: Final[Mapping[str, str]] = {
    "gemini": "google-gemini",
    "gemini-pro": "google-gemini",
}

DEFAULT_SYSTEM_PROMPT: Final = "You are helpful assistant. Follow the user's instructions carefully."
GREETING: Final = "Hello, how can I help you today?"
DEFAULT_TEMPERATURE: Final = 0.7

# Browser-like headers FlowGpt's frontend sends. Kept in one place; the signing
# headers and Authorization are added per request (Authorization exactly once).
BROWSER_HEADERS: Final[Mapping[str, str]] = {
    "User-Agent": "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:122.0) Gecko/20100101 Firefox/122.0",
    "Accept": "*/*",
    "Accept-Language": "en-US;q=0.7,en;q=0.3",
    "Referer": "https://flowgpt.com/",
    "Origin": "https://flowgpt.com",
    "Content-Type": "application/json",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-Mode": "cors",
    "Sec-Fetch-Site": "same-site",
}

_DEVICE_ALPHABET: Final = string.ascii_lowercase + string.digits

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message reduced to what FlowGpt understands."""

    role: Role
    content: str


class UnknownModelError(LookupError):
    """The requested model is neither a FlowGpt model nor an alias of one."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is not supported")
        self.model = model


def resolve_model(model: str | None) -> str:
    """Return the FlowGpt model id for ``model`` (an id, an alias, or empty for the default)."""
    if not model:
        return DEFAULT_MODEL
    if model in MODELS:
        return model
    alias = MODEL_ALIASES.get(model)
    if alias is None:
        raise UnknownModelError(model)
    return alias


def signature(timestamp: str, nonce: str, authorization: str) -> str:
    """FlowGpt's request signature: md5 of ``timestamp-nonce-authorization``."""
    return hashlib.md5(f"{timestamp}-{nonce}-{authorization}".encode()).hexdigest()  # noqa: S324


def authorization_value(token: str) -> str:
    """The Authorization header for a bearer token (``null`` for anonymous)."""
    return f"Bearer {token}"


def signed_headers(token: str, *, now: float | None = None) -> dict[str, str]:
    """Headers for one request: browser headers plus fresh nonce, timestamp and signature."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = hex_id(16)
    auth = authorization_value(token)
    headers = dict(BROWSER_HEADERS)
    headers["Authorization"] = auth
    # One random draw for all 19 characters (unique, not secret: see gateway.ids).
    headers["x-flow-device-id"] = "f-" + "".join(_DEVICE_ALPHABET[b % 36] for b in random_bytes(19))
    headers["x-nonce"] = nonce
    headers["x-signature"] = signature(timestamp, nonce, auth)
    headers["x-timestamp"] = timestamp
    return headers


def question_index(roles: Sequence[str]) -> int:
    """Which message is the question: the last one that is not a system (or developer) message."""
    for index in range(len(roles) - 1, -1, -1):
        if roles[index] not in ("system", "developer"):
            return index
    return len(roles) - 1


def build_body(model: str, messages: Sequence[Message], temperature: float | None = None) -> dict[str, Any]:
    """The JSON body FlowGpt expects for ``messages`` (the last one that is not a system message is the question).

    System messages, wherever they are, are joined with a real newline (the original
    provider joined them with a literal backslash-n) and never appear in the history.
    """
    if not messages:
        raise ValueError("at least one message is required")
    asked = question_index([m.role for m in messages])
    system = "\n".join(m.content for m in messages if m.role == "system") or DEFAULT_SYSTEM_PROMPT
    history = [{"role": m.role, "content": m.content} for m in messages[:asked] if m.role != "system"]
    return {
        "model": model,
        "nsfw": False,
        "question": messages[asked].content,
        "history": [{"role": "assistant", "content": GREETING}, *history],
        "system": system,
        "temperature": DEFAULT_TEMPERATURE if temperature is None else temperature,
        "promptId": f"model-{model}",
        "documentIds": [],
        "chatFileDocumentIds": [],
        "generateImage": False,
        "generateAudio": False,
    }
