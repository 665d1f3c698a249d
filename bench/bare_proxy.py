"""The floor: a minimal aiohttp proxy doing the gateway's two hops and nothing else.

It accepts an OpenAI chat request, signs it and forwards it to FlowGpt (the
simulator) with the FlowGpt body, decodes the NDJSON answer and replies with
OpenAI JSON or SSE, byte for byte in the gateway's format and with one write per
upstream read (the SSE events it brought; the last read's leave with the end), as the
gateway does. No validation beyond what the two hops need, no
breaker, limiter, retries, timeouts, metrics, logging or request ids: whatever the
gateway costs on top of this is the price of those features.

Run: ``python -m bench.bare_proxy --port 8081 --upstream http://127.0.0.1:8090/v3/chat-anonymous``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from gateway.flowgpt.ndjson import NdjsonDecoder
from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, Message, build_body, resolve_model, signed_headers
from gateway.openai_schema import ChunkEncoder, completion, new_completion_id

UPSTREAM_URL: Final = web.AppKey("upstream_url", str)
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)
SSE_HEADERS: Final = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
MAX_LINE_BYTES: Final = 1024 * 1024


def _messages(raw: Any) -> list[Message]:
    return [Message(role="system" if m["role"] == "developer" else m["role"], content=m["content"]) for m in raw]


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions: the two hops, nothing else."""
    data = orjson.loads(await request.read())
    model = resolve_model(data.get("model"))
    body = orjson.dumps(build_body(model, _messages(data["messages"]), data.get("temperature")))
    upstream = await request.app[SESSION].post(
        request.app[UPSTREAM_URL], data=body, headers=signed_headers(ANONYMOUS_TOKEN)
    )
    try:
        if upstream.status != 200:
            return web.Response(status=502, text=f"upstream status {upstream.status}")
        decoder = NdjsonDecoder(max_line_bytes=MAX_LINE_BYTES)
        if data.get("stream"):
            return await _stream(request, upstream, decoder, model)
        fragments: list[str] = []
        async for chunk in upstream.content.iter_any():
            fragments.extend(decoder.feed(chunk))
        fragments.extend(decoder.finish())
    finally:
        upstream.release()
    payload = completion(new_completion_id(), model, "".join(fragments))
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, decoder: NdjsonDecoder, model: str
) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    encoder = ChunkEncoder(new_completion_id(), model)
    events = [encoder.role()]
    async for chunk in upstream.content.iter_any():
        events.extend(encoder.content(fragment) for fragment in decoder.feed(chunk))
        if not upstream.content.at_eof():  # else these leave with the end
            await response.write(b"".join(events))
            events.clear()
    events.extend(encoder.content(fragment) for fragment in decoder.finish())
    events.append(encoder.stop())
    await response.write(b"".join(events))
    await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: always 200 (used to wait for start-up)."""
    return web.Response(text="ok")


def create_app(upstream_url: str) -> web.Application:
    """The proxy application; one client session, keep-alive, no connection limit (like the gateway)."""
    app = web.Application()
    app[UPSTREAM_URL] = upstream_url

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(host: str, port: int, upstream_url: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(create_app(upstream_url), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"bare proxy on http://{host}:{port}/v1/chat/completions -> {upstream_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def event_loop_runner(use_uvloop: bool) -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop.run when asked for and installed (the gateway's default), else asyncio.run."""
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run
    return asyncio.run


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--upstream", required=True, help="FlowGpt chat URL (the simulator's)")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    ns = parser.parse_args(argv)
    event_loop_runner(not ns.no_uvloop)(serve(ns.host, ns.port, ns.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
