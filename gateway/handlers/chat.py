"""``POST /v1/chat/completions``: OpenAI-compatible chat, streaming (SSE) and not."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from aiohttp import web

from gateway.errors import (
    GatewayError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ShuttingDownError,
)
from gateway.flowgpt.client import ChatPrompt
from gateway.flowgpt.protocol import UnknownModelError, resolve_model
from gateway.middlewares import error_response
from gateway.openai_schema import ChunkEncoder, completion, error_event, new_completion_id, parse_chat_request
from gateway.state import SETTINGS, STREAM_RESPONSE, UPSTREAM
from gateway.upstream import Answer

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-like proxies not to buffer the stream
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Validate, admit, then answer in one JSON object or as a stream of chunks."""
    upstream = request.app[UPSTREAM]
    task = asyncio.current_task()
    assert task is not None
    upstream.active.add(task)
    try:
        return await _complete(request)
    except asyncio.CancelledError:
        if task not in upstream.cut_by_shutdown:
            raise  # the client went away
        task.uncancel()
        started: web.StreamResponse | None = request.get(STREAM_RESPONSE)
        if started is not None and started.prepared:
            return started  # its head is on the wire: finish that response, never start a second one
        return error_response(ShuttingDownError("the gateway shut down before the answer was ready"))
    finally:
        upstream.active.discard(task)


async def _complete(request: web.Request) -> web.StreamResponse:
    # During an outage refuse before reading or validating anything: it cannot succeed anyway.
    request.app[UPSTREAM].refuse_early()
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    chat = parse_chat_request(await _read_body(request))
    try:
        model = resolve_model(chat.model)
    except UnknownModelError:
        raise ModelNotFoundError(
            f"the model '{chat.model[:100]}' does not exist; GET /v1/models lists the available ones", param="model"
        ) from None
    prompt = ChatPrompt(model, tuple(m.to_flowgpt() for m in chat.messages), chat.temperature)
    answer = await request.app[UPSTREAM].open(prompt)
    try:
        if chat.stream:
            return await _stream(request, answer, model)
        text = await answer.read_all()
    finally:
        await answer.aclose()  # on cancellation (client gone) this drops the upstream connection at once
    return web.Response(
        body=orjson.dumps(completion(new_completion_id(), model, text)), content_type="application/json"
    )


async def _read_body(request: web.Request) -> bytes:
    """The body, within the client read timeout: a slow client must not hold a slot forever."""
    if request.content.is_eof():
        return await request.read()  # already buffered (small bodies come with the headers): no wait, no timer
    seconds = request.app[SETTINGS].client_read_timeout
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {seconds:g}s") from None


async def _stream(request: web.Request, answer: Answer, model: str) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    request[STREAM_RESPONSE] = response
    await response.prepare(request)
    encoder = ChunkEncoder(new_completion_id(), model)
    try:
        await response.write(encoder.role())
        async for fragment in answer:
            await response.write(encoder.content(fragment))
        await response.write(encoder.stop())
    except GatewayError as exc:
        log.warning("stream ended by an error code=%s", exc.code)
        await response.write(error_event(exc))
    except ConnectionResetError:
        log.info("client went away mid-stream")
        return response
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task not in request.app[UPSTREAM].cut_by_shutdown:
            raise  # the client went away: nobody to tell
        # The shutdown grace is over: tell the client why the stream ends instead of dropping it.
        task.uncancel()
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            async with asyncio.timeout(1.0):
                await response.write(error_event(ShuttingDownError("the gateway shut down mid-stream")))
    await response.write_eof()
    return response
