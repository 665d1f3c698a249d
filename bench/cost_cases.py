"""The rows of the cost table: each times one feature of the request path on the real objects.

A case is a factory: given how many calls the timing loop will make, it returns an async
callable doing one request's worth of the feature (and, where needed, made requests to use up).
``bench.costs`` subtracts the case's baseline (the same loop doing the part that is not the
feature, e.g. the inner handler a middleware wraps) and reports what is left.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson
from aiohttp import web

from bench import bare_proxy
from bench.cost_fixture import FRAGMENTS, chat_request
from bench.loadgen import EXPECTED, MODEL
from gateway.app_keys import INFLIGHT, METRICS, ROUTES, UPSTREAM
from gateway.deadlines import Deadline
from gateway.flowgpt.client import ChatPrompt
from gateway.flowgpt.protocol import resolve_model
from gateway.handlers import chat
from gateway.middlewares import add_request_id_header
from gateway.openai_schema import parse_chat_request
from gateway.outcome import classify
from gateway.overhead import answered_by, waiting
from gateway.simulator.answers import split_answer

Step = Callable[[], Awaitable[object]]
Make = Callable[[int], Awaitable[Step]]
PIECES: Final = split_answer(EXPECTED, FRAGMENTS)
RESPONSE: Final = web.Response(body=b"{}", content_type="application/json")


@dataclass(frozen=True, slots=True)
class Apps:
    """The started gateway, a second one whose metrics do nothing (the middleware without them), the bare proxy."""

    gateway: web.Application
    quiet: web.Application
    bare: web.Application


class NullMetrics:
    """Stands in for ``Metrics`` where a case times the code around the metrics calls."""

    def observe_http(self, *args: object, **kwargs: object) -> None:
        """Nothing."""

    def observe_overhead(self, *args: object) -> None:
        """Nothing."""


def sync(fn: Callable[[], object]) -> Make:
    """A case from a plain function."""

    async def make(number: int) -> Step:
        async def step() -> object:
            return fn()

        return step

    return make


def per_request(apps: Apps, stream: bool, body: Callable[[web.Request], Awaitable[object]]) -> Make:
    """A case that needs a fresh made request per call (a body is read once)."""

    async def make(number: int) -> Step:
        requests = iter([await chat_request(apps.gateway, stream=stream) for _ in range(number)])

        async def step() -> object:
            return await body(next(requests))

        return step

    return make


def middleware(app: web.Application, mw: Any, *, handler: Any = None, headers: dict[str, str] | None = None) -> Make:
    """One request (with ``headers``) through middleware ``mw`` (around ``handler``) and the response hook."""

    async def inner(request: web.Request) -> web.StreamResponse:
        answered_by("default")  # the chat handler names the route that answered (the overhead metric's label)
        return RESPONSE

    async def make(number: int) -> Step:
        requests = iter([await chat_request(app, headers=headers) for _ in range(number)])
        wrapped = functools.partial(mw, handler=handler or inner) if mw is not None else handler or inner

        async def step() -> object:
            request = next(requests)
            response = await wrapped(request)
            await add_request_id_header(request, response)
            return response

        return step

    return make


def handler_only(app: web.Application, *, headers: dict[str, str] | None = None) -> Make:
    """The baseline of the middleware cases: the inner handler alone, on a fresh request (with ``headers``)."""

    async def inner(request: web.Request) -> web.StreamResponse:
        answered_by("default")
        return RESPONSE

    async def make(number: int) -> Step:
        requests = iter([await chat_request(app, headers=headers) for _ in range(number)])

        async def step() -> object:
            return await inner(next(requests))

        return step

    return make


def fresh_requests(app: web.Application, stream: bool = False) -> Make:
    """The baseline of per-request cases: taking the next made request."""

    async def make(number: int) -> Step:
        requests = iter([await chat_request(app, stream=stream) for _ in range(number)])

        async def step() -> object:
            return next(requests)

        return step

    return make


async def validated(request: web.Request) -> object:
    """What the chat handler does with the body before admission: read, validate, resolve, reduce."""
    parsed, _ = parse_chat_request(await chat._read_body(request), drop_params=False)
    model = resolve_model(parsed.model)
    return ChatPrompt(model, tuple([m.to_flowgpt() for m in parsed.messages]), parsed.temperature)


async def bare_parsed(request: web.Request) -> object:
    """What the bare proxy does with the body: read, orjson, resolve the model, reduce the messages."""
    data = orjson.loads(await request.read())
    return resolve_model(data.get("model")), bare_proxy._messages(data["messages"])


def admission(app: web.Application) -> Make:
    """In-flight tracking, the drain check (twice) and the early refusal check (working flags, breakers)."""
    tracker, upstream = app[INFLIGHT], app[UPSTREAM]

    async def make(number: int) -> Step:
        async def step() -> object:
            tracker.refuse_if_draining()  # in the handler's order: the early checks, then the tracking
            upstream.refuse_early()
            with tracker.track():
                tracker.refuse_if_draining()
            return None

        return step

    return make


def slot(app: web.Application) -> Make:
    """Take and give back a concurrency slot."""
    limiter = app[UPSTREAM].limiter

    async def make(number: int) -> Step:
        async def step() -> object:
            await limiter.acquire()
            limiter.release()
            return None

        return step

    return make


def ticket(app: web.Application) -> Make:
    """A breaker ticket's life on a successful call: admit, first token, settled as completed."""
    breaker = app[ROUTES]["default"].breaker

    async def make(number: int) -> Step:
        async def step() -> object:
            t = breaker.admit(MODEL)
            await breaker.answered(t)
            await breaker.settle(t, classify(None))
            return None

        return step

    return make


def upstream_metrics(app: web.Application, stream: bool) -> Make:
    """The route's metrics calls of one answered call, token counters, the overhead stopwatch's waits."""
    metrics = app[METRICS]
    route = metrics.routes["default"]
    waits = 1 + FRAGMENTS  # the first-token wait, then one per later fragment and the end

    async def make(number: int) -> Step:
        async def step() -> object:
            route.selected.inc()
            route.upstream_requests.inc()
            route.inflight.inc()
            route.first_token.observe(0.0008)
            for _ in range(waits):
                with waiting():
                    pass
            route.inflight.dec()
            route.upstream_duration.observe(0.0011)
            metrics.count_tokens("default", MODEL, prompt=13, completion=11)
            if stream:
                metrics.stream_ended("completed")
            return None

        return step

    return make


def deadlines(app: web.Application, timers: int) -> Make:
    """``timers`` Deadline scopes (the shared timers) around awaits that return at once, and the deadline arithmetic."""
    service = app[UPSTREAM]

    async def nothing() -> None:
        return None

    async def make(number: int) -> Step:
        loop = asyncio.get_running_loop()

        async def step() -> object:
            deadline = loop.time() + service.timeouts.total
            for _ in range(timers):
                remaining = max(0.0, deadline - loop.time())
                with Deadline(min(service.timeouts.first_token, remaining)):
                    await nothing()
            return None

        return step

    return make


def quiet_app(gateway: web.Application, make_app: Callable[[], web.Application]) -> web.Application:
    """A second gateway app whose metrics do nothing (not started: the middlewares need only its keys)."""
    app = make_app()
    app[METRICS] = cast(Any, NullMetrics())
    return app
