"""Cases of the cost table for the answer's side: the client-write guard, encoding, tokens, the cutter, the sampler.

See ``bench.cost_cases`` for what a case is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, cast

import orjson
from aiohttp import web

from bench.cost_cases import Make, Step
from bench.cost_fixture import FRAGMENTS
from bench.loadgen import EXPECTED, MODEL
from gateway.app_keys import STATUS_SAMPLER, TOKENS, UPSTREAM
from gateway.client_writes import ClientWriteGuard
from gateway.cutter import Cutter
from gateway.openai_schema import ChunkEncoder, completion, new_completion_id, usage
from gateway.simulator.answers import split_answer

PIECES: Final = split_answer(EXPECTED, FRAGMENTS)


class NullResponse:
    """A response whose writes cost nothing, so a case times only what surrounds them."""

    async def write(self, data: bytes) -> None:
        """Nothing."""

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing."""


def write_guard(app: web.Application, writes: int) -> Make:
    """A ClientWriteGuard around ``writes`` writes and the end (the same writes unguarded are the baseline)."""
    timeouts = app[UPSTREAM].timeouts
    response = cast(web.StreamResponse, NullResponse())

    async def make(number: int) -> Step:
        async def step() -> object:
            async with ClientWriteGuard(write_timeout=timeouts.client_write, total_remaining=timeouts.total) as guard:
                for _ in range(writes):
                    await guard.write(response, b"x")
                await guard.write_eof(response)
            return None

        return step

    return make


def unguarded_writes(writes: int) -> Make:
    """The write guard's baseline."""
    response = NullResponse()

    async def make(number: int) -> Step:
        async def step() -> object:
            for _ in range(writes):
                await response.write(b"x")
            await response.write_eof()
            return None

        return step

    return make


def encode_json(with_usage: bool) -> Callable[[], object]:
    """The non-streamed answer: id, object, orjson, the response object (usage: the gateway's)."""

    def encode() -> object:
        payload = completion(new_completion_id(), MODEL, EXPECTED, usage=usage(13, 11) if with_usage else None)
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    return encode


def encode_sse(with_usage: bool) -> Callable[[], object]:
    """The streamed answer's events: role, one per fragment, stop (with usage when asked)."""

    def encode() -> object:
        encoder = ChunkEncoder(new_completion_id(), MODEL)
        events = [encoder.role(), *(encoder.content(piece) for piece in PIECES)]
        events.append(encoder.stop("stop", usage(13, 11) if with_usage else None))
        return events

    return encode


def sampler_tick(app: web.Application) -> Callable[[], object]:
    """One status-page sample (every ``GATEWAY_UI_SAMPLE_SECONDS``)."""
    return app[STATUS_SAMPLER].sample


def token_counts(app: web.Application) -> Make:
    """The usage: prompt tokens before the call, completion tokens after it."""
    counter = app[TOKENS]

    async def make(number: int) -> Step:
        async def step() -> object:
            return await counter.prompt_soon([("user", "Hello, how are you today?")]) + await counter.count_soon(
                EXPECTED
            )

        return step

    return make


def cutter(app: web.Application) -> Callable[[], object]:
    """The answer's cutter (no stop, no max_tokens in the benchmark's request): one feed per fragment and the end."""
    counter = app[TOKENS]

    def cut() -> object:
        c = Cutter(stops=(), limit=None, counter=counter)
        for piece in PIECES:
            c.feed(piece)
        return c.end()

    return cut
