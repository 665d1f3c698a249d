"""The real gateway app in one process, with the upstream's HTTP replaced by bytes already received.

``bench.costs`` times the request path's features on these objects: the app is built by
``create_app`` and started with ``web.AppRunner`` (so its cleanup contexts made the routes, the
breaker, the limiter and the token counter), and each route's real ``FlowGptClient`` talks to a
:class:`CannedSession` whose ``post`` answers at once with the simulator's NDJSON for the benchmark's
question. Everything above aiohttp's own client and server I/O is the gateway's real code.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from bench.loadgen import EXPECTED, request_for
from gateway.app import create_app
from gateway.app_keys import ROUTES
from gateway.flowgpt.client import FlowGptClient
from gateway.settings import Settings
from gateway.simulator.answers import answer_lines

CHAT_PATH: Final = "/v1/chat/completions"
CHUNKS: Final = 8  # as the benchmark's simulator (``--chunks 8``)
NDJSON: Final = b"".join(answer_lines(EXPECTED, CHUNKS))
FRAGMENTS: Final = CHUNKS


class _Protocol:
    """What ``StreamReader`` asks of its protocol when it buffers a little (nothing, here)."""

    _reading_paused = False

    def pause_reading(self, **_: object) -> None:
        """Never called: the answer is far below the reader's limit."""

    def resume_reading(self, **_: object) -> None:
        """Never called."""


def fed_reader(data: bytes) -> aiohttp.StreamReader:
    """A real aiohttp ``StreamReader`` holding ``data`` and its end, as when a zero-delay answer has arrived."""
    reader = aiohttp.StreamReader(cast(Any, _Protocol()), 2**16, loop=asyncio.get_running_loop())
    reader.feed_data(data)
    reader.feed_eof()
    return reader


class CannedResponse:
    """The few parts of ``aiohttp.ClientResponse`` that the gateway and the bare proxy read."""

    status = 200
    headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/x-ndjson"}))

    def __init__(self, body: bytes) -> None:
        self.content = fed_reader(body)

    def close(self) -> None:
        """Nothing to drop."""

    def release(self) -> None:
        """Nothing to give back."""


class CannedSession:
    """``post`` answers every call with the simulator's NDJSON for the benchmark question; counts calls."""

    def __init__(self, body: bytes = NDJSON) -> None:
        self._body = body
        self.posts = 0

    async def post(self, url: str, **_: Any) -> CannedResponse:
        """One upstream call, already answered."""
        self.posts += 1
        return CannedResponse(self._body)


async def started_gateway(**settings: Any) -> tuple[web.AppRunner, web.Application, CannedSession]:
    """The gateway app as ``python -m bench`` runs it (probe off), started; its routes' clients use a canned session."""
    app = create_app(Settings(probe_enabled=False, upstream_url="http://127.0.0.1:9/v3/chat-anonymous", **settings))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    session = CannedSession()
    for route in app[ROUTES]:
        client: FlowGptClient = route.client
        client._session = cast(aiohttp.ClientSession, session)
    return runner, app, session


_MADE: dict[tuple[int, bool], tuple[Any, Any, Any, Any]] = {}


async def chat_request(
    app: web.Application, *, stream: bool = False, headers: dict[str, str] | None = None
) -> web.Request:
    """A made ``POST /v1/chat/completions`` with the benchmark's body buffered, resolved to its route.

    The first one per app is made from scratch; later ones share its (mocked) protocol, transport,
    writer and route match, which only cost time to make: a request's body and state are its own.
    """
    body, base_headers = request_for("openai", stream)
    all_headers = {**base_headers, "Content-Length": str(len(body)), **(headers or {})}
    shared = _MADE.get((id(app), stream))
    if shared is None:
        request = make_mocked_request("POST", CHAT_PATH, all_headers, app=app, payload=fed_reader(body))
        match_info = await app.router.resolve(request)
        match_info.add_app(app)
        _MADE[(id(app), stream)] = (request.protocol, request.transport, request.writer, match_info)
    else:
        protocol, transport, writer, match_info = shared
        request = make_mocked_request(
            "POST",
            CHAT_PATH,
            all_headers,
            app=app,
            payload=fed_reader(body),
            protocol=protocol,
            transport=transport,
            writer=writer,
        )
    request._match_info = match_info  # what aiohttp's server does after routing
    return request
