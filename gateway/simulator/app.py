"""The simulator's state and its FlowGpt chat endpoint.

All state lives in one ``SimState`` under ``SIM_STATE``, so ``Simulator`` can keep
faults and stats across restarts (``server`` assembles the application).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from typing import Any, Final, Literal

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.simulator.faults import (
    GARBAGE_LINES,
    HTML,
    JSON,
    MAINTENANCE_PAGE,
    META_LINES,
    NDJSON,
    ChatBody,
    SimFaults,
    SimOptions,
    answer_lines,
    auth_problem,
    describe_error,
    expected_answer,
    long_answer_lines,
    split_error_body,
)

logger = logging.getLogger(__name__)

_HEALTHY: Final = SimFaults()
# aiohttp does not cancel a handler when its client leaves, so waiting handlers are
# checked this often; it bounds how late a stalled stream notices a disconnect.
_POLL_INTERVAL: Final = 0.05
Wake = Literal["elapsed", "gone", "stopping"]
Outcome = Literal["done", "gone", "stopping", "reset"]


def _wake(waiter: asyncio.Future[Wake], why: Wake) -> None:
    if not waiter.done():
        waiter.set_result(why)


@dataclass
class SimStats:
    """Counters a test or a drill can assert on; ``to_dict`` is what ``/_sim/stats`` serves."""

    requests_total: int = 0
    responses_by_status: dict[int, int] = field(default_factory=dict)
    faulted_total: int = 0
    garbage_lines_sent: int = 0
    text_chunks_sent: int = 0
    active_streams: int = 0
    client_disconnects: int = 0
    completed_streams: int = 0
    last_body: dict[str, Any] | None = None
    last_headers: dict[str, str] | None = None

    def count(self, status: int) -> None:
        """Record one chat response with ``status``."""
        self.responses_by_status[status] = self.responses_by_status.get(status, 0) + 1

    def reset(self) -> None:
        """Zero everything except ``active_streams``, which must keep matching reality."""
        fresh = SimStats(active_streams=self.active_streams)
        for item in fields(self):
            setattr(self, item.name, getattr(fresh, item.name))

    def to_dict(self) -> dict[str, Any]:
        """A deep copy as plain data (``responses_by_status`` keeps int keys)."""
        return asdict(self)


class SimState:
    """What one simulator shares between requests: options, faults (settable), stats, RNG."""

    def __init__(
        self,
        options: SimOptions | None = None,
        faults: SimFaults | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options or SimOptions()
        self._faults = faults or SimFaults()
        self.faulted_with_current = 0  # requests faulted since the faults were last replaced
        self.stats = SimStats()
        self.rng = random.Random(self.options.seed)
        self.clock = clock
        self.stopping = False
        self.streams: set[asyncio.Transport] = set()  # of open streams, to cut on stop
        self._waiters: dict[asyncio.Future[Wake], web.BaseRequest] = {}

    @property
    def faults(self) -> SimFaults:
        """The faults in force."""
        return self._faults

    @faults.setter
    def faults(self, faults: SimFaults) -> None:
        self._faults = faults
        self.faulted_with_current = 0

    def take_fault(self) -> None:
        """Count one faulted request; heal once a fault's ``count`` is used up."""
        self.stats.faulted_total += 1
        self.faulted_with_current += 1
        if self._faults.count is not None and self.faulted_with_current >= self._faults.count:
            self.faults = SimFaults()

    async def pause(self, request: web.BaseRequest, seconds: float | None) -> Wake:
        """Wait ``seconds`` (None: forever); end early if the client leaves or we stop."""
        if self.stopping:
            return "stopping"
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Wake] = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _wake, waiter, "elapsed")
        self._waiters[waiter] = request
        try:
            return await waiter
        finally:
            del self._waiters[waiter]
            if timer is not None:
                timer.cancel()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the app runs, one task notices clients that left a waiting handler."""
        self.stopping = False
        watcher = asyncio.create_task(self._watch_clients())
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch_clients(self) -> None:
        while True:
            await asyncio.sleep(_POLL_INTERVAL)
            for waiter, request in list(self._waiters.items()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    _wake(waiter, "gone")

    def drop_streams(self) -> None:
        """Stopping: wake every waiting handler and cut every open stream."""
        self.stopping = True
        for waiter in list(self._waiters):
            _wake(waiter, "stopping")
        for transport in list(self.streams):
            transport.abort()


SIM_STATE: Final = web.AppKey("sim_state", SimState)


def _reject(state: SimState, status: int, message: str, field: str | None = None) -> web.Response:
    state.stats.count(status)
    logger.debug("chat rejected status=%d reason=%s", status, message)
    payload: dict[str, str] = {"message": message}
    if field:
        payload["field"] = field
    return web.json_response(payload, status=status)


async def chat(request: web.Request) -> web.StreamResponse:
    """POST /v3/chat-anonymous: check the signature and body, then answer or misbehave."""
    state = request.app[SIM_STATE]
    stats = state.stats
    stats.requests_total += 1
    stats.last_headers = dict(request.headers)
    if state.options.check_signature:
        problem = auth_problem(request.headers, state.options, state.clock())
        if problem is not None:
            return _reject(state, 401, problem)
    try:
        raw = await request.read()
        payload = orjson.loads(raw)
    except web.HTTPRequestEntityTooLarge:
        return _reject(state, 413, "body too large")
    except orjson.JSONDecodeError:
        return _reject(state, 400, "body is not valid JSON")
    if not isinstance(payload, dict):
        return _reject(state, 400, "body must be a JSON object")
    stats.last_body = payload
    try:
        body = ChatBody.model_validate(payload)
    except ValidationError as exc:
        field, message = describe_error(exc)
        return _reject(state, 400, message, field)

    faults = state.faults
    # The body alone decides a rejection: a test reproduces it by what it sends, not by luck.
    rejection = faults.rejection(raw)
    if rejection is not None:
        state.take_fault()
        status, data = rejection
        stats.count(status)
        logger.debug("chat rejected by fault status=%d", status)
        return web.Response(status=status, body=data, headers={"Content-Type": JSON})
    # Drawn per request from the seeded RNG, so a seeded run faults the same requests.
    if faults.shapes_responses and (faults.ratio >= 1 or state.rng.random() < faults.ratio):
        state.take_fault()
    else:
        faults = _HEALTHY
    if faults.http_status is not None:
        return await _send_error(request, state, faults)
    if faults.html_200:
        stats.count(200)
        return web.Response(body=MAINTENANCE_PAGE.encode(), headers={"Content-Type": HTML})
    return await _stream(request, state, faults, expected_answer(body.model, body.question))


async def _send_error(request: web.Request, state: SimState, faults: SimFaults) -> web.StreamResponse:
    status, data, content_type, extra = faults.error_response()
    state.stats.count(status)
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
                woke = await state.pause(request, faults.error_chunk_delay)
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


async def _stream(request: web.Request, state: SimState, faults: SimFaults, answer: str) -> web.StreamResponse:
    stats = state.stats
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    stats.count(200)
    transport = request.transport
    if transport is not None:
        state.streams.add(transport)
    stats.active_streams += 1
    outcome: Outcome | None = None  # stays None if aiohttp cancels us
    try:
        await response.prepare(request)  # StreamResponse sends the headers now, like a slow real model
        outcome = await _send_answer(request, response, state, faults, answer)
    except ConnectionError:  # a write blocked on drain gets a plain ConnectionError when the client leaves
        outcome = "stopping" if state.stopping else "gone"
    finally:
        if transport is not None:
            state.streams.discard(transport)
        stats.active_streams -= 1
        if outcome == "gone":
            stats.client_disconnects += 1
        elif outcome == "done":
            stats.completed_streams += 1
    if transport is not None and outcome == "reset":
        # Closing without the chunked terminator: the client sees a truncated body.
        transport.close()
    elif transport is not None and outcome == "stopping":
        transport.abort()  # a request that slipped in after drop_streams
    # Unless the outcome is "done" the transport is now closed, so aiohttp's final
    # write fails and is dropped quietly as a premature disconnect.
    return response


async def _send_answer(
    request: web.Request, response: web.StreamResponse, state: SimState, faults: SimFaults, answer: str
) -> Outcome:
    options, stats = state.options, state.stats
    if faults.empty_stream:
        return "done"
    if faults.slow_first_token > 0:
        woke = await state.pause(request, faults.slow_first_token)
        if woke != "elapsed":
            return woke
    cuts = [n for n in (faults.reset_after, faults.stall_after) if n is not None]
    cut = min(cuts) if cuts else None
    head = META_LINES if options.meta_events else b""
    if options.chunk_delay == 0 and faults.answer_bytes is None:
        # Benchmark path: the whole body in one write, garbage drawn only when asked for.
        lines = answer_lines(answer, options.chunks)[:cut]
        if faults.garbage_ratio > 0:
            lines = tuple(_garbage(state, faults) + line for line in lines)
        data = head + b"".join(lines)
        if data:
            await response.write(data)
        stats.text_chunks_sent += len(lines)
    else:
        # One write per event: a long answer is made lazily and each write waits for
        # a slow reader to drain, so it never piles up in memory.
        events: Iterable[bytes] = (
            answer_lines(answer, options.chunks)
            if faults.answer_bytes is None
            else long_answer_lines(answer, faults.answer_bytes)
        )
        if head:
            await response.write(head)
        for index, line in enumerate(islice(events, cut)):
            if index and options.chunk_delay > 0:
                woke = await state.pause(request, options.chunk_delay)
                if woke != "elapsed":
                    return woke
            await response.write(_garbage(state, faults) + line)
            stats.text_chunks_sent += 1
    if cut is None:
        return "done"
    if cut == faults.reset_after:
        return "reset"
    woke = await state.pause(request, None)
    return "stopping" if woke == "elapsed" else woke


def _garbage(state: SimState, faults: SimFaults) -> bytes:
    if faults.garbage_ratio <= 0 or state.rng.random() >= faults.garbage_ratio:
        return b""
    state.stats.garbage_lines_sent += 1
    return state.rng.choice(GARBAGE_LINES)
