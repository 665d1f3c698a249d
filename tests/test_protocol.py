"""FlowGpt protocol: signing, headers, body shape and model resolution."""

from __future__ import annotations

import hashlib
import re

import pytest

from gateway.flowgpt.protocol import (
    BROWSER_HEADERS,
    DEFAULT_MODEL,
    DEFAULT_SYSTEM_PROMPT,
    MODELS,
    Message,
    UnknownModelError,
    build_body,
    resolve_model,
    signed_headers,
)


def test_signature_is_md5_of_timestamp_nonce_auth() -> None:
    """x-signature equals md5("<timestamp>-<nonce>-<Authorization>") recomputed independently."""
    headers = signed_headers("null", now=1_700_000_000.7)
    assert headers["x-timestamp"] == "1700000000"
    raw = f"{headers['x-timestamp']}-{headers['x-nonce']}-Bearer null".encode()
    assert headers["x-signature"] == hashlib.md5(raw).hexdigest()


def test_headers_are_fresh_per_request_and_well_formed() -> None:
    """Each call gets a new 32-hex nonce and an f- device id of 19 [a-z0-9] chars."""
    first, second = signed_headers("null"), signed_headers("null")
    assert first["x-nonce"] != second["x-nonce"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["x-nonce"])
    assert re.fullmatch(r"f-[a-z0-9]{19}", first["x-flow-device-id"])


def test_authorization_appears_once_and_carries_the_token() -> None:
    """Authorization is set exactly once (the seed duplicated it) and uses the configured token."""
    headers = signed_headers("s3cret")
    assert [k.lower() for k in headers].count("authorization") == 1
    assert headers["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in BROWSER_HEADERS
    assert headers["Origin"] == "https://flowgpt.com"


def test_body_shape_matches_the_protocol() -> None:
    """System messages joined by a real newline, history without them, greeting first."""
    messages = [
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("system", "Use English."),
        Message("assistant", "Hello!"),
        Message("user", "How are you?"),
    ]
    body = build_body("gpt-4-turbo", messages, 0.3)
    assert body == {
        "model": "gpt-4-turbo",
        "nsfw": False,
        "question": "How are you?",
        "history": [
            {"role": "assistant", "content": "Hello, how can I help you today?"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
        "system": "Be brief.\nUse English.",
        "temperature": 0.3,
        "promptId": "model-gpt-4-turbo",
        "documentIds": [],
        "chatFileDocumentIds": [],
        "generateImage": False,
        "generateAudio": False,
    }
    assert "\\n" not in body["system"]


def test_body_defaults() -> None:
    """Without system messages or temperature the protocol's defaults apply."""
    body = build_body(DEFAULT_MODEL, [Message("user", "Hi")])
    assert body["system"] == DEFAULT_SYSTEM_PROMPT
    assert body["temperature"] == 0.7
    assert body["history"] == [{"role": "assistant", "content": "Hello, how can I help you today?"}]


def test_body_needs_a_message() -> None:
    """An empty conversation is a programming error, not a request."""
    with pytest.raises(ValueError, match="at least one message"):
        build_body(DEFAULT_MODEL, [])


@pytest.mark.parametrize(
    ("requested", "resolved"),
    [("gemini", "google-gemini"), ("gemini-pro", "google-gemini"), ("claude-v2", "claude-v2"), ("", DEFAULT_MODEL)],
)
def test_model_resolution(requested: str, resolved: str) -> None:
    """Aliases map to FlowGpt ids; ids map to themselves; empty means the default."""
    assert resolve_model(requested) == resolved


def test_unknown_model_is_a_typed_error() -> None:
    """Unknown names raise UnknownModelError carrying the name (g4f's ModelNotSupportedError)."""
    with pytest.raises(UnknownModelError) as info:
        resolve_model("gpt-5")
    assert info.value.model == "gpt-5"
    assert "gpt-5" not in MODELS
