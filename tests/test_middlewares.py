"""gateway.middlewares: request id, access log and HTTP metrics, API keys, errors as OpenAI JSON.

The middlewares run in a small application of their own (toy handlers, the gateway's
app keys) on loopback, so each behaviour is seen without the chat path around it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.app_keys import API_KEYS, METRICS, SETTINGS, STATUS_OVERRIDE
from gateway.errors import CircuitOpenError, UpstreamConnectError
from gateway.metrics import Metrics
from gateway.middlewares import add_request_id_header, middlewares_for
from tests.gateway_support import make_settings

Client = TestClient[web.Request, web.Application]
MiddlewareApp = Callable[..., Awaitable[Client]]
KEY = "sk-test-key"


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _read_body(request: web.Request) -> web.Response:
    return web.json_response({"bytes": len(await request.read())})


async def _unavailable(request: web.Request) -> web.Response:
    raise CircuitOpenError("the breaker is open", retry_after=2.5)


async def _bad_gateway(request: web.Request) -> web.Response:
    raise UpstreamConnectError("cannot reach the upstream")


async def _bug(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


async def _client_went_away(request: web.Request) -> web.Response:
    request[STATUS_OVERRIDE] = 499
    return web.Response()


@pytest.fixture(name="make_app")
def make_app_fixture(aiohttp_client: AiohttpClient) -> MiddlewareApp:
    """A server with the gateway's middlewares (in the gateway's order) around toy handlers."""

    async def factory(*, api_keys: tuple[str, ...] = (), **settings: Any) -> Client:
        keys = tuple(key.encode() for key in api_keys)
        app = web.Application(middlewares=middlewares_for(keys), client_max_size=1024)
        app[SETTINGS] = make_settings("http://127.0.0.1:9/unused", **settings)
        app[METRICS] = metrics = Metrics()
        app[API_KEYS] = keys
        app.on_response_prepare.append(add_request_id_header)
        app.router.add_get("/v1/items/{id}", _ok)
        app.router.add_post("/v1/upload", _read_body)
        app.router.add_get("/healthz", _ok)
        app.router.add_get("/unavailable", _unavailable)
        app.router.add_get("/bad-gateway", _bad_gateway)
        app.router.add_get("/bug", _bug)
        app.router.add_get("/gone", _client_went_away)
        metrics.precreate_routes([("/v1/items/{id}", "GET"), ("/gone", "GET"), ("/bug", "GET")])
        return await aiohttp_client(app)

    return factory


def _requests(client: Client, route: str, method: str, code: str) -> float:
    registry = client.app[METRICS].registry
    labels = {"route": route, "method": method, "code": code}
    return registry.get_sample_value("gateway_http_requests_total", labels) or 0.0


async def test_a_sane_request_id_is_echoed_and_a_hostile_one_replaced(make_app: MiddlewareApp) -> None:
    """X-Request-ID that matches the safe pattern comes back as is; anything else gets a fresh 32-hex id."""
    client = await make_app()
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    response = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    fresh = response.headers["X-Request-ID"]
    assert len(fresh) == 32
    assert int(fresh, 16) >= 0


async def test_requests_are_counted_by_route_template_not_raw_path(make_app: MiddlewareApp) -> None:
    """Two item ids count under one template; an unknown path counts as 'unmatched' with its 404."""
    client = await make_app()
    for item in ("1", "2"):
        assert (await client.get(f"/v1/items/{item}")).status == 200
    assert (await client.get("/nowhere")).status == 404
    assert _requests(client, "/v1/items/{id}", "GET", "200") == 2
    assert _requests(client, "unmatched", "GET", "404") == 1


async def test_a_status_override_is_what_gets_counted(make_app: MiddlewareApp) -> None:
    """A handler that marks its request 499 (client cut) is counted as 499, not as the response's 200."""
    client = await make_app()
    assert (await client.get("/gone")).status == 200
    assert _requests(client, "/gone", "GET", "499") == 1
    assert _requests(client, "/gone", "GET", "200") == 0


async def test_an_unrouted_method_is_labelled_other(make_app: MiddlewareApp) -> None:
    """A method no route serves is counted as method 'other' under 'unmatched', so clients invent no label values."""
    client = await make_app()
    response = await client.patch("/v1/items/1")
    assert response.status == 405
    assert _requests(client, "unmatched", "other", "405") == 1


@pytest.mark.parametrize(
    ("access_log", "path", "logged"),
    [
        pytest.param("errors", "/bad-gateway", True, id="errors-502"),
        pytest.param("errors", "/bug", True, id="errors-500"),
        pytest.param("errors", "/unavailable", False, id="errors-503-refusal"),
        pytest.param("errors", "/healthz", False, id="errors-200"),
        pytest.param("all", "/healthz", True, id="all-200"),
        pytest.param("off", "/bad-gateway", False, id="off-502"),
    ],
)
async def test_access_log_writes_one_line_when_its_mode_asks(
    make_app: MiddlewareApp, caplog: pytest.LogCaptureFixture, access_log: str, path: str, logged: bool
) -> None:
    """One access line per request in mode 'all'; in 'errors' only failures (not 503 refusals); none when 'off'."""
    client = await make_app(access_log=access_log)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.get(path)
    lines = [r for r in caplog.records if r.name == "gateway.access" and r.getMessage().startswith("request ")]
    assert len(lines) == (1 if logged else 0)


async def test_a_gateway_error_becomes_openai_json_with_retry_after_rounded_up(make_app: MiddlewareApp) -> None:
    """The error's status, an OpenAI error body, and Retry-After in whole seconds, rounded up."""
    client = await make_app()
    response = await client.get("/unavailable")
    assert response.status == 503
    assert response.headers["Retry-After"] == "3"
    body = await response.json()
    assert body == {
        "error": {"message": "the breaker is open", "type": "server_error", "param": None, "code": "circuit_open"}
    }


async def test_an_unexpected_exception_is_a_500_without_internals(
    make_app: MiddlewareApp, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug answers 500 internal_error; the traceback goes to the log, never to the client."""
    client = await make_app()
    with caplog.at_level(logging.ERROR, logger="gateway.access"):
        response = await client.get("/bug")
    assert response.status == 500
    text = await response.text()
    assert "secret internals" not in text
    assert (await response.json())["error"]["code"] == "internal_error"
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


async def test_unknown_paths_and_methods_are_json_errors(make_app: MiddlewareApp) -> None:
    """404 not_found for an unknown path; 405 method_not_allowed with the Allow header for a wrong method."""
    client = await make_app()
    response = await client.get("/nowhere")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await client.delete("/v1/items/1")
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_a_body_over_the_limit_is_413_json(make_app: MiddlewareApp) -> None:
    """A body past client_max_size is request_too_large, naming the configured limit."""
    client = await make_app(max_body_bytes=1024)
    response = await client.post("/v1/upload", data=b"x" * 4096)
    assert response.status == 413
    body = await response.json()
    assert body["error"]["code"] == "request_too_large"
    assert "1024" in body["error"]["message"]


async def test_an_undecodable_body_is_400_and_the_connection_closed(make_app: MiddlewareApp) -> None:
    """A body that is not what its Content-Encoding claims is invalid_request, and the connection is not reused."""
    client = await make_app()
    response = await client.post("/v1/upload", data=b"plain, not gzip", headers={"Content-Encoding": "gzip"})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_request"
    assert response.headers.get("Connection", "").lower() == "close"


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(None, 401, id="missing"),
        pytest.param("Bearer wrong", 401, id="wrong-key"),
        pytest.param(f"Basic {KEY}", 401, id="wrong-scheme"),
        pytest.param(f"Bearer {KEY}", 200, id="right-key"),
        pytest.param(f"bearer {KEY}", 200, id="scheme-any-case"),
    ],
)
async def test_v1_needs_a_configured_key(make_app: MiddlewareApp, authorization: str | None, status: int) -> None:
    """With keys set, /v1/* needs 'Authorization: Bearer <key>'; anything else is 401 invalid_api_key."""
    client = await make_app(api_keys=("other-key", KEY))
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await client.get("/v1/items/1", headers=headers)
    assert response.status == status
    if status == 401:
        assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_ops_endpoints_and_keyless_gateways_need_no_key(make_app: MiddlewareApp) -> None:
    """Keys guard only /v1/*; without configured keys nothing is guarded."""
    guarded = await make_app(api_keys=(KEY,))
    assert (await guarded.get("/healthz")).status == 200
    open_gateway = await make_app()
    assert (await open_gateway.get("/v1/items/1")).status == 200
