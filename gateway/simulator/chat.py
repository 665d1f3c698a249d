"""The simulator's FlowGpt chat endpoint (plain and per route): check the request, then answer or misbehave."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Final, Literal

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.simulator.answers import (
    HTML,
    JSON,
    META_LINES,
    NDJSON,
    answer_lines,
    expected_answer,
    long_answer_lines,
    text_line,
)
from gateway.simulator.contract import ChatBody, auth_problem, describe_error
from gateway.simulator.faults import GARBAGE_LINES, MAINTENANCE_PAGE, SimFaults, split_error_body
from gateway.simulator.routes import DEFAULT_ROUTE, Route, RouteError
from gateway.simulator.state import SIM_STATE, SimState
from gateway.simulator.stats import Tally

logger = logging.getLogger(__name__)

_HEALTHY: Final = SimFaults()
Outcome = Literal["done", "gone", "stopping", "reset"]


@dataclass(frozen=True, slots=True)
class _Call:
    """One chat request's context: the shared state, its route and the stats it counts in."""

    state: SimState
    route: Route
    tally: Tally

    def take_fault(self) -> None:
        self.tally.add("faulted_total")
        self.route.take_fault()


def _reject(tally: Tally, status: int, message: str, field: str | None = None) -> web.Response:
    tally.count(status)
    logger.debug("chat rejected status=%d reason=%s", status, message)
    payload: dict[str, str] = {"message": message}
    if field:
        payload["field"] = field
    return web.json_response(payload, status=status)


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /v3/chat-anonymous or /r/{route}/v3/chat-anonymous: check, then answer or misbehave."""
    state = request.app[SIM_STATE]
    headers = dict(request.headers)
    try:
        route = state.routes.get(request.match_info.get("route", DEFAULT_ROUTE))
    except RouteError as exc:
        # Counted globally only: the route has no state (and must not get any).
        tally = Tally(state.stats)
        tally.received(headers)
        return _reject(tally, exc.status, str(exc), "route" if exc.status == 400 else None)
    call = _Call(state, route, Tally(state.stats, route.stats))
    tally = call.tally
    tally.received(headers)
    if state.options.check_signature:
        problem = auth_problem(request.headers, state.options, state.clock())
        if problem is not None:
            return _reject(tally, 401, problem)
    try:
        raw = await request.read()
        payload = orjson.loads(raw)
    except web.HTTPRequestEntityTooLarge:
        return _reject(tally, 413, "body too large")
    except orjson.JSONDecodeError:
        return _reject(tally, 400, "body is not valid JSON")
    if not isinstance(payload, dict):
        return _reject(tally, 400, "body must be a JSON object")
    tally.parsed(payload)
    try:
        body = ChatBody.model_validate(payload)
    except ValidationError as exc:
        field, message = describe_error(exc)
        return _reject(tally, 400, message, field)

    faults = route.faults
    if not faults.applies_to(request.headers.get("Authorization"), body.model):
        faults = _HEALTHY  # another account, host or model: this route is healthy for it
    # The body alone decides a rejection: a test reproduces it by what it sends, not by luck.
    rejection = faults.rejection(raw)
    if rejection is not None:
        call.take_fault()
        status, data = rejection
        tally.count(status)
        logger.debug("chat rejected by fault status=%d route=%s", status, route.name)
        return web.Response(status=status, body=data, headers={"Content-Type": JSON})
    # Drawn per request from the route's seeded RNG, so a seeded run faults the same requests.
    if faults.shapes_responses and (faults.ratio >= 1 or route.rng.random() < faults.ratio):
        call.take_fault()
    else:
        faults = _HEALTHY
    if faults.http_status is not None:
        return await _send_error(request, call, faults)
    if faults.html_200:
        tally.count(200)
        return web.Response(body=MAINTENANCE_PAGE.encode(), headers={"Content-Type": HTML})
    return await _stream(request, call, faults, expected_answer(body.model, body.question))


async def _send_error(request: web.Request, call: _Call, faults: SimFaults) -> web.StreamResponse:
    status, data, content_type, extra = faults.error_response()
    call.tally.count(status)
    headers = {"Content-Type": content_type, **extra}
    # 1xx, 204 and 304 must not carry a body.
    if status < 200 or status in (204, 304):
        return web.Response(status=status, headers=headers)
    if faults.error_body_chunks is None:
        return web.Response(status=status, body=data, headers=headers)
    # Chunked, one write per piece with a pause between, so each piece reaches the
    # client as a separate read.
    response = web.StreamResponse(status=status, headers=headers)
    try:
        await response.prepare(request)
        for index, piece in enumerate(split_error_body(data, faults.error_body_chunks)):
            if index:
                woke = await call.state.pause(request, faults.error_chunk_delay)
                if woke == "gone":
                    break
                if woke == "stopping":
                    # Cut, not finished: a complete chunked body would pass for the whole page.
                    if request.transport is not None:
                        request.transport.abort()
                    break
            await response.write(piece)
    except ConnectionError:
        pass  # the client left; aiohttp then drops its final write quietly
    return response


async def _stream(request: web.Request, call: _Call, faults: SimFaults, answer: str) -> web.StreamResponse:
    state, tally = call.state, call.tally
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    tally.count(200)
    transport = request.transport
    if transport is not None:
        state.streams.add(transport)
    tally.add("active_streams")
    outcome: Outcome | None = None  # stays None if aiohttp cancels us
    try:
        await response.prepare(request)  # StreamResponse sends the headers now, like a slow real model
        outcome = await _send_answer(request, response, call, faults, answer)
    except ConnectionError:  # a write blocked on drain gets a plain ConnectionError when the client leaves
        outcome = "stopping" if state.stopping else "gone"
    finally:
        if transport is not None:
            state.streams.discard(transport)
        tally.add("active_streams", -1)
        if outcome == "gone":
            tally.add("client_disconnects")
        elif outcome == "done":
            tally.add("completed_streams")
    if transport is not None and outcome == "reset":
        # Closing without the chunked terminator: the client sees a truncated body.
        transport.close()
    elif transport is not None and outcome == "stopping":
        transport.abort()  # a request that slipped in after drop_streams
    # Unless the outcome is "done" the transport is now closed, so aiohttp's final
    # write fails and is dropped quietly as a premature disconnect.
    return response


async def _send_answer(
    request: web.Request, response: web.StreamResponse, call: _Call, faults: SimFaults, answer: str
) -> Outcome:
    state, tally = call.state, call.tally
    options = state.options
    if faults.empty_stream:
        return "done"
    if faults.slow_first_token > 0:
        woke = await state.pause(request, faults.slow_first_token)
        if woke != "elapsed":
            return woke
    cuts = [n for n in (faults.reset_after, faults.stall_after) if n is not None]
    cut = min(cuts) if cuts else None
    head = META_LINES if options.meta_events else b""
    chosen = None if faults.answer_pieces is None else tuple(text_line(piece) for piece in faults.answer_pieces)
    if options.chunk_delay == 0 and faults.answer_bytes is None:
        # Benchmark path: the whole body in one write, garbage drawn only when asked for.
        lines = (chosen if chosen is not None else answer_lines(answer, options.chunks))[:cut]
        if faults.garbage_ratio > 0:
            lines = tuple(_garbage(call, faults) + line for line in lines)
        data = head + b"".join(lines)
        if data:
            await response.write(data)
        tally.add("text_chunks_sent", len(lines))
    else:
        # One write per event: a long answer is made lazily and each write waits for
        # a slow reader to drain, so it never piles up in memory.
        events: Iterable[bytes] = (
            long_answer_lines(answer, faults.answer_bytes)
            if faults.answer_bytes is not None
            else chosen or answer_lines(answer, options.chunks)
        )
        if head:
            await response.write(head)
        for index, line in enumerate(islice(events, cut)):
            if index and options.chunk_delay > 0:
                woke = await state.pause(request, options.chunk_delay)
                if woke != "elapsed":
                    return woke
            await response.write(_garbage(call, faults) + line)
            tally.add("text_chunks_sent")
    if cut is None:
        return "done"
    if cut == faults.reset_after:
        return "reset"
    woke = await state.pause(request, None)
    return "stopping" if woke == "elapsed" else woke


def _garbage(call: _Call, faults: SimFaults) -> bytes:
    rng = call.route.rng
    if faults.garbage_ratio <= 0 or rng.random() >= faults.garbage_ratio:
        return b""
    call.tally.add("garbage_lines_sent")
    return rng.choice(GARBAGE_LINES)
