"""``POST /v1/chat/completions``: OpenAI-compatible chat, streaming (SSE) and not."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import orjson
from aiohttp import web

from gateway.answer import Answer
from gateway.app_keys import (
    CLOCK,
    DROPPED_PARAMS,
    INFLIGHT,
    METRICS,
    SETTINGS,
    STATUS_OVERRIDE,
    STREAM_RESPONSE,
    TOKENS,
    UPSTREAM,
)
from gateway.client_writes import ClientStalledError, ClientWriteGuard
from gateway.cutter import Cutter
from gateway.errors import (
    GatewayError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ShuttingDownError,
)
from gateway.fields import drop_label
from gateway.flowgpt.client import ChatPrompt
from gateway.flowgpt.protocol import UnknownModelError, resolve_model
from gateway.handlers.reply import Reply
from gateway.metrics import StreamOutcome
from gateway.middlewares import CLIENT_CLOSED_REQUEST, error_response
from gateway.openai_schema import ChunkEncoder, completion, error_event, new_completion_id, parse_chat_request
from gateway.overhead import waiting

log = logging.getLogger(__name__)

# Below asyncio's default write-buffer high-water mark (64 KiB), a response never waits on its client.
GUARD_BODY_BYTES = 32 * 1024
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-like proxies not to buffer the stream
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Validate, admit, then answer in one JSON object or as a stream of chunks."""
    tracker = request.app[INFLIGHT]
    # Refuse first: before the body is read or validated (during an outage the call cannot succeed),
    # and untracked (a refusal awaits nothing, so a drain has nothing to wait for).
    tracker.refuse_if_draining()
    request.app[UPSTREAM].refuse_early()
    with tracker.track() as task:
        try:
            return await _complete(request)
        except asyncio.CancelledError:
            if not tracker.was_cut(task):
                raise  # the client went away
            task.uncancel()
            started: web.StreamResponse | None = request.get(STREAM_RESPONSE)
            if started is not None and started.prepared:
                return started  # its head is on the wire: finish that response, never start a second one
            return error_response(ShuttingDownError("the gateway shut down before the answer was ready"))


async def _complete(request: web.Request) -> web.StreamResponse:
    app = request.app
    upstream = app[UPSTREAM]
    limit = app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    chat, dropped = parse_chat_request(await _read_body(request), drop_params=app[SETTINGS].drop_params)
    if dropped:
        _report_dropped(request, dropped)
    try:
        model = resolve_model(chat.model)
    except UnknownModelError:
        raise ModelNotFoundError(
            f"the model '{chat.model[:100]}' does not exist; GET /v1/models lists the available ones", param="model"
        ) from None
    messages = tuple([m.to_flowgpt() for m in chat.messages])
    prompt = ChatPrompt(model, messages, chat.temperature)
    counter = app[TOKENS]
    reply = Reply(
        model=model,
        prompt_tokens=await counter.prompt_soon([(m.role, m.content) for m in messages]),
        include_usage=chat.include_usage,
        cutter=functools.partial(Cutter, stops=chat.stop_texts, limit=chat.token_limit, counter=counter),
    )
    app[INFLIGHT].refuse_if_draining()  # the drain may have begun while the body arrived
    # Leaving this scope, on cancellation (client gone) too, drops the upstream connection at once.
    if chat.stream:
        async with upstream.answer(prompt) as answer:
            return await _stream(request, answer, reply)
    async with upstream.answer(prompt, whole=reply.cutter) as answer:
        assert answer.whole is not None
        text, finish_reason = answer.whole.text, answer.whole.finish_reason or "stop"
        usage = await reply.settle(app[METRICS], answer.route.name, answer.whole, counter)
    body = orjson.dumps(completion(new_completion_id(), model, text, finish_reason=finish_reason, usage=usage))
    response = web.Response(body=body, content_type="application/json")
    if len(body) < GUARD_BODY_BYTES:
        return response  # it fits the transport's buffer: writing it cannot wait on the client
    # The slot is free now, but the answer is in memory and the socket open: a client that does not
    # read it is cut like a stalled stream reader.
    await response.prepare(request)
    try:
        async with _write_guard(request, answer) as guard:
            await guard.write_eof(response)
    except ClientStalledError as exc:
        _cut_stalled_client(request, exc)
    except ConnectionError:
        _client_gone(request)
    return response


async def _read_body(request: web.Request) -> bytes:
    """The body, within the client read timeout: a slow client must not hold a slot forever."""
    if request.content.is_eof():
        return await request.read()  # already buffered (small bodies come with the headers): no wait, no timer
    seconds = request.app[SETTINGS].client_read_timeout
    try:
        with waiting():
            async with asyncio.timeout(seconds):
                return await request.read()
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {seconds:g}s") from None


async def _stream(request: web.Request, answer: Answer, reply: Reply) -> web.StreamResponse:
    app = request.app
    response = web.StreamResponse(headers=SSE_HEADERS)
    request[STREAM_RESPONSE] = response
    await response.prepare(request)
    encoder = ChunkEncoder(new_completion_id(), reply.model)
    cutter = reply.cutter()
    events = [encoder.role()]  # encoded, not yet written (a cut at shutdown still sends them)
    try:
        async with _write_guard(request, answer) as guard:
            outcome: StreamOutcome = "completed"
            try:
                # The events of one upstream read leave in one write (with the end, when the answer has
                # all arrived): what arrived together leaves together, a syscall per read, not per fragment.
                while fragments := await answer.next_fragments():
                    for fragment in fragments:
                        if text := cutter.feed(fragment):
                            events.append(encoder.content(text))
                        if cutter.finish_reason is not None:
                            break
                    if cutter.finish_reason is None and answer.drained:
                        continue  # all of it has arrived: these events leave with the end, in one write
                    await guard.write(response, _take(events))
                    if cutter.finish_reason is not None:
                        answer.finish_early()  # leaving the scope cancels the rest upstream
                        break
                else:
                    if text := cutter.end():
                        events.append(encoder.content(text))
                usage = await reply.settle(app[METRICS], answer.route.name, cutter, app[TOKENS])
                events.append(encoder.stop(cutter.finish_reason or "stop", usage if reply.include_usage else None))
                await guard.write(response, _take(events))
            except GatewayError as exc:
                log.warning("stream ended by an error code=%s", exc.code)
                await reply.settle(app[METRICS], answer.route.name, cutter, app[TOKENS])
                outcome = "rejected" if exc.status < 500 and exc.status != 429 else "error"
                await guard.write(response, _take(events) + error_event(exc))
            await guard.write_eof(response)
            app[METRICS].stream_ended(outcome)
            return response
    except ClientStalledError as exc:
        # Not an upstream failure: the answer scope closes the stream without blaming anyone.
        _cut_stalled_client(request, exc)
        app[METRICS].stream_ended("client_gone")
        return response
    except ConnectionError:  # reset, or "Connection lost" while a write waited for the drain
        log.info("client went away mid-stream")
        _client_gone(request)
        app[METRICS].stream_ended("client_gone")
        return response
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not app[INFLIGHT].was_cut(task):
            raise  # the client went away: nobody to tell
        assert task is not None
        # The shutdown grace is over: tell the client why the stream ends instead of dropping it.
        task.uncancel()
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            async with asyncio.timeout(1.0):
                # What was encoded but held for the end (the whole answer had arrived) goes first.
                cut = error_event(ShuttingDownError("the gateway shut down mid-stream"))
                await response.write(_take(events) + cut)
                await response.write_eof()
        app[METRICS].stream_ended("error")  # the gateway, not the client, ended it
        return response


def _take(events: list[bytes]) -> bytes:
    """The encoded events as one write, the list emptied first: a write cut short is never sent twice."""
    data = b"".join(events)
    events.clear()
    return data


def _report_dropped(request: web.Request, dropped: tuple[str, ...]) -> None:
    """Count the dropped fields and name them in the answer's headers (its error's too)."""
    counters = request.app[METRICS].dropped_params
    for param in dropped:
        counters[drop_label(param)].inc()
    request[DROPPED_PARAMS] = ",".join(dropped)


def _write_guard(request: web.Request, answer: Answer) -> ClientWriteGuard:
    """Writes to this client may block ``GATEWAY_TIMEOUT_CLIENT_WRITE`` each, never past the total deadline."""
    app = request.app
    return ClientWriteGuard(
        write_timeout=app[UPSTREAM].timeouts.client_write, total_remaining=answer.deadline - app[CLOCK]()
    )


def _cut_stalled_client(request: web.Request, stalled: ClientStalledError) -> None:
    log.warning("client stopped reading, response cut waited_ms=%.0f", stalled.waited * 1000)
    _client_gone(request)


def _client_gone(request: web.Request) -> None:
    """Record 499 (nginx's "client closed request") and drop the connection; nothing more will fit."""
    request[STATUS_OVERRIDE] = CLIENT_CLOSED_REQUEST
    if request.transport is not None:
        request.transport.abort()  # discards what the client never read, so the socket goes now
