"""The OpenAI-compatible endpoint through a real simulator: success, validation and each fault."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.middlewares import api_key_auth, errors, observe
from gateway.simulator import CLOUDFLARE_PAGE, SimFaults, Simulator, expected_answer
from tests.gateway_support import GatewayFactory, chat_body, sse_events

Client = TestClient[web.Request, web.Application]


async def test_non_streaming_completion(gateway: Client, sim: Simulator) -> None:
    """A plain request returns one chat.completion whose text is the simulator's answer."""
    response = await gateway.post("/v1/chat/completions", json=chat_body("What is 2+2?"))
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-3.5-turbo"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": expected_answer("gpt-3.5-turbo", "What is 2+2?")},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert response.headers["X-Request-ID"]


async def test_streaming_completion(gateway: Client) -> None:
    """A streaming request yields role, content chunks, a stop chunk and [DONE]."""
    response = await gateway.post("/v1/chat/completions", json=chat_body("Stream it", stream=True, model="gemini"))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "logprobs": None, "delta": {}, "finish_reason": "stop"}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text == expected_answer("google-gemini", "Stream it")
    assert len(chunks) > 3  # really streamed in pieces


async def test_conversation_reaches_the_upstream_intact(gateway: Client, sim: Simulator) -> None:
    """System, history and content parts (joined by a newline) are translated into FlowGpt's body."""
    body = {
        "model": "claude-v2",
        "temperature": 1.5,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "No emojis."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
    }
    response = await gateway.post("/v1/chat/completions", json=body)
    assert response.status == 200
    sent = sim.stats.last_body
    assert sent is not None
    assert sent["system"] == "Be brief.\nNo emojis."
    assert sent["question"] == "Bye"
    assert sent["temperature"] == 1.5
    assert sent["history"][1:] == [{"role": "user", "content": "Hi \nthere"}, {"role": "assistant", "content": "Hello!"}]


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (b'{"model": "gpt-3.5-turbo"}', 400, "invalid_request", "messages"),
        (b'{"model": "gpt-3.5-turbo", "messages": []}', 400, "invalid_request", "messages"),
        (
            b'{"model": "gpt-3.5-turbo", "messages": [{"role": "tool", "content": "x"}]}',
            400,
            "unsupported_content",
            "messages.0",
        ),
        (
            b'{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": 5}]}',
            400,
            "invalid_request",
            "messages.0.content",
        ),
        (
            b'{"model": "gpt-3.5-turbo", "temperature": 3, "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_request",
            "temperature",
        ),
        (
            b'{"model": "gpt-3.5-turbo", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
            400,
            "invalid_request",
            "stream",
        ),
        (b'{"model": "gpt-3.5-turbo", "messages": [{"role": "system", "content": "x"}]}', 400, "invalid_request", None),
        (b'{"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found", "model"),
    ],
)
async def test_bad_requests_get_clear_errors(
    gateway: Client, sim: Simulator, payload: bytes, status: int, code: str, param: str | None
) -> None:
    """Malformed or invalid requests are refused with OpenAI-shaped errors naming the field; nothing goes upstream."""
    response = await gateway.post("/v1/chat/completions", data=payload, headers={"Content-Type": "application/json"})
    assert response.status == status
    error = (await response.json())["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]
    if param:
        assert param.split(".")[0] in error["message"]
    assert sim.stats.requests_total == 0


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
            "Field required",
            id="text-part-without-text",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [None]}]},
            "messages.0.content.0",
            "valid dictionary",
            id="null-part",
        ),
        pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4", id="five-stops"),
        pytest.param({"stop": [""]}, "stop.0", "at least 1 character", id="empty-stop"),
        pytest.param({"stop": {"a": 1}}, "stop", "a valid string or a valid list", id="stop-object"),
        pytest.param(
            {"messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
            "a valid string or a valid list",
            id="content-number",
        ),
    ],
)
async def test_a_union_error_says_what_is_wrong_with_the_value_given(
    gateway: Client, extra: dict[str, object], param: str, says: str
) -> None:
    """A list given for a string-or-list field gets the list's own error; another value hears both forms."""
    response = await gateway.post("/v1/chat/completions", json={**chat_body(), **extra})
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["param"]) == (400, "invalid_request", param)
    assert says in error["message"]
    assert "Input should be a valid string" not in error["message"].replace("a valid string or", "")


async def test_oversized_body_is_413(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A body over GATEWAY_MAX_BODY_BYTES is refused with 413 before it is parsed."""
    gateway = await make_gateway(max_body_bytes=2048)
    response = await gateway.post("/v1/chat/completions", json=chat_body("x" * 4096))
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"
    assert sim.stats.requests_total == 0


async def test_models_listing_and_lookup(gateway: Client) -> None:
    """/v1/models lists FlowGpt's models and aliases; lookups 404 in OpenAI's shape."""
    listing = await (await gateway.get("/v1/models")).json()
    ids = [model["id"] for model in listing["data"]]
    assert "gpt-3.5-turbo" in ids
    assert "gemini-pro" in ids
    alias = await (await gateway.get("/v1/models/gemini-pro")).json()
    assert alias["alias_of"] == "google-gemini"
    missing = await gateway.get("/v1/models/nope")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "model_not_found"


async def test_unknown_route_and_method(gateway: Client) -> None:
    """Unknown paths are 404 and wrong methods 405, both as JSON errors."""
    response = await gateway.get("/v1/nothing")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await gateway.get("/v1/chat/completions")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"


async def test_api_keys_guard_v1_only(make_gateway: GatewayFactory) -> None:
    """With API keys set, /v1/* needs a valid bearer key; ops endpoints stay open."""
    gateway = await make_gateway(api_keys="key-one,key-two")
    assert (await gateway.get("/v1/models")).status == 401
    wrong = await gateway.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await wrong.json())["error"]["code"] == "invalid_api_key"
    assert (await gateway.get("/v1/models", headers={"Authorization": "Bearer key-two"})).status == 200
    assert (await gateway.get("/healthz")).status == 200


async def test_the_key_check_runs_only_where_keys_are_set(make_gateway: GatewayFactory, gateway: Client) -> None:
    """Without keys there is no key-check layer for every request to pass through (it costs each one
    a coroutine); with keys it sits inside the error layer, so a refusal is OpenAI-shaped JSON."""
    assert api_key_auth not in gateway.app.middlewares
    assert (await gateway.get("/v1/models")).status == 200
    keyed = await make_gateway(api_keys="key-one")
    assert list(keyed.app.middlewares) == [observe, errors, api_key_auth]


async def test_request_id_is_echoed(gateway: Client) -> None:
    """A sane incoming X-Request-ID is echoed; a hostile one is replaced."""
    response = await gateway.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await gateway.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["X-Request-ID"] != "bad id\twith spaces"
    assert len(response.headers["X-Request-ID"]) == 32


CLOUDFLARE_BODY = "cloudflare"


def _fault_cases() -> list[Any]:
    return [
        pytest.param(SimFaults(http_status=500), 502, "upstream_http_status", "HTTP 500", id="500"),
        pytest.param(
            SimFaults(http_status=503, http_body="<html>down</html>"),
            502,
            "upstream_http_status",
            "HTML content",
            id="503-html",
        ),
        pytest.param(SimFaults(http_status=429, retry_after=30), 429, "upstream_rate_limited", "retry in 30 s", id="429"),
        pytest.param(SimFaults(http_status=402), 502, "upstream_rate_limited", "rate limit", id="402"),
        pytest.param(
            SimFaults(http_status=403, http_body=CLOUDFLARE_BODY),
            502,
            "upstream_blocked",
            "Cloudflare",
            id="cloudflare",
        ),
        pytest.param(SimFaults(http_status=401), 502, "upstream_auth", "credentials", id="401"),
        pytest.param(SimFaults(html_200=True), 502, "upstream_protocol", "HTML", id="html-200"),
        pytest.param(SimFaults(empty_stream=True), 502, "upstream_protocol", "without sending any text", id="empty"),
        pytest.param(
            SimFaults(garbage_ratio=1.0, reset_after=0), 502, "upstream_interrupted", "broke", id="reset-at-start"
        ),
        pytest.param(SimFaults(slow_first_token=1.0), 504, "upstream_timeout", "within", id="slow-first-token"),
    ]


@pytest.mark.parametrize(("faults", "status", "code", "message_part"), _fault_cases())
async def test_faults_before_the_first_token(
    make_gateway: GatewayFactory, sim: Simulator, faults: SimFaults, status: int, code: str, message_part: str
) -> None:
    """Each upstream fault before any text becomes the documented status, code and message."""
    gateway = await make_gateway(timeout_first_token=0.3, retry_max=0)
    sim.faults = faults
    response = await gateway.post("/v1/chat/completions", json=chat_body())
    assert response.status == status
    error = (await response.json())["error"]
    assert error["code"] == code
    assert error["type"] == ("rate_limit_error" if status == 429 else "upstream_error")
    assert message_part in error["message"]
    if faults.http_status == 429:
        assert response.headers["Retry-After"] == "30"


async def test_garbage_lines_are_skipped(gateway: Client, sim: Simulator) -> None:
    """Garbage between text lines costs nothing: the answer is complete."""
    sim.faults = SimFaults(garbage_ratio=1.0)
    response = await gateway.post("/v1/chat/completions", json=chat_body("garbage"))
    assert response.status == 200
    assert (await response.json())["choices"][0]["message"]["content"] == expected_answer("gpt-3.5-turbo", "garbage")
    assert sim.stats.garbage_lines_sent > 0


@pytest.mark.parametrize("fault", ["reset_after", "stall_after"])
async def test_mid_stream_failure_ends_with_error_event(
    make_gateway: GatewayFactory, sim: Simulator, fault: str
) -> None:
    """A stream that breaks after it started ends with one error event and no [DONE]."""
    gateway = await make_gateway(timeout_idle=0.3)
    sim.faults = SimFaults.model_validate({fault: 2})
    response = await gateway.post("/v1/chat/completions", json=chat_body("abcdefghijklmnopqrstuvwxyz", stream=True))
    assert response.status == 200
    events = sse_events(await response.text())
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    expected = {"reset_after": "upstream_interrupted", "stall_after": "upstream_timeout"}[fault]
    assert error["code"] == expected
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-1]]
    assert len(contents) == 2


@pytest.mark.parametrize("fault", ["reset_after", "stall_after"])
async def test_mid_stream_failure_without_streaming_is_an_error(
    make_gateway: GatewayFactory, sim: Simulator, fault: str
) -> None:
    """Without streaming nothing was sent yet, so a broken answer is a clean 502/504, never half a text."""
    gateway = await make_gateway(timeout_idle=0.3)
    sim.faults = SimFaults.model_validate({fault: 2})
    response = await gateway.post("/v1/chat/completions", json=chat_body())
    assert response.status == {"reset_after": 502, "stall_after": 504}[fault]


async def test_connection_refused(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A stopped upstream is a 502 upstream_connect error."""
    gateway = await make_gateway(retry_max=0)
    await sim.stop()
    response = await gateway.post("/v1/chat/completions", json=chat_body())
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "upstream_connect"


def test_cloudflare_page_has_markers() -> None:
    """The simulator's Cloudflare page carries the markers the client looks for."""
    assert "<title>Just a moment...</title>" in CLOUDFLARE_PAGE
