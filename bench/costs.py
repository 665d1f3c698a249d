"""The cost table: CPU µs per request for each feature of the gateway's request path.

``python -m bench.costs`` starts the real gateway app in this process (``bench.cost_fixture``:
``create_app``, the routes, breaker, limiter and token counter as ``serve`` makes them, the
upstream's bytes already received), times each feature on those objects (``bench.cost_cases``,
best of ``--repeat`` loops of ``--number`` calls, minus the case's baseline), and prints one row per
feature for a non-streamed and a streamed request, with the part the bare proxy spends too. Then it
times the whole non-streamed request in-process, through the gateway's middlewares and chat handler
and through the bare proxy's handler, on the same canned upstream answer. See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson

from bench import bare_proxy
from bench import cost_answer as a
from bench import cost_cases as c
from bench.bare_proxy import SESSION, event_loop_runner
from bench.cost_fixture import FRAGMENTS, CannedSession, chat_request, started_gateway
from bench.loadgen import MODEL
from gateway.app import create_app
from gateway.app_keys import ROUTES, STATUS_SAMPLER
from gateway.handlers.chat import chat_completions
from gateway.middlewares import add_request_id_header, api_key_auth, errors, observe
from gateway.settings import Settings

NUMBER: Final = 2_000
REPEAT: Final = 5
# Deadline scopes per answer on the live path: the first-token limit. A read of the upstream stream
# takes one more only when nothing is buffered; py-spy at c=64 found none (the answer arrives in one segment).
TIMERS: Final = 1
STREAM_WRITES: Final = 1  # the events of an answer that arrived in one read leave in one write; then the end


@dataclass(frozen=True, slots=True)
class Row:
    """One feature: its case and baseline per kind of request, and the bare proxy's share of it."""

    feature: str
    nonstream: tuple[c.Make | None, c.Make | None]
    stream: tuple[c.Make | None, c.Make | None]
    shared: tuple[c.Make | None, c.Make | None] = (None, None)
    shared_stream: tuple[c.Make | None, c.Make | None] = (None, None)
    how: str = ""


async def _loop_seconds(make: c.Make, number: int) -> float:
    step = await make(number)
    started = time.perf_counter()
    for _ in range(number):
        await step()
    return time.perf_counter() - started


async def cost_us(case: c.Make | None, base: c.Make | None, *, number: int, repeat: int) -> float:
    """Best-of-``repeat`` µs per call of ``case`` minus its baseline (an empty step when None); 0 without a case."""
    if case is None:
        return 0.0
    empty = c.sync(lambda: None)
    best = math.inf
    best_base = math.inf
    for _ in range(repeat):  # interleaved, so a slow moment hits both alike
        best = min(best, await _loop_seconds(case, number))
        best_base = min(best_base, await _loop_seconds(base or empty, number))
    return max(0.0, best - best_base) / number * 1e6


BENCH_KEY: Final = "bench-key"
BEARER: Final = {"Authorization": f"Bearer {BENCH_KEY}"}


def rows(apps: c.Apps) -> list[Row]:
    """Every feature of the request path, in the order a request meets them."""
    gw, quiet = apps.gateway, apps.quiet
    same = c.handler_only(gw)
    # The key check is installed only with keys: timed on an app that has one, the key presented.
    keyed = create_app(Settings(probe_enabled=False, ui="off", api_keys=(BENCH_KEY,)))
    return [
        Row(
            "request id and access log",
            (c.middleware(quiet, observe), c.handler_only(quiet)),
            (c.middleware(quiet, observe), c.handler_only(quiet)),
            how="observe middleware + X-Request-ID hook, metrics calls stubbed; access log `errors`: no line on 200",
        ),
        Row(
            "API-key check",
            (c.middleware(keyed, api_key_auth, headers=BEARER), c.handler_only(keyed, headers=BEARER)),
            (c.middleware(keyed, api_key_auth, headers=BEARER), c.handler_only(keyed, headers=BEARER)),
            how="api_key_auth with one key, presented; without keys (as the benchmark runs) it is not installed",
        ),
        Row(
            "body read and validation",
            (c.per_request(apps, False, c.validated), c.fresh_requests(gw)),
            (c.per_request(apps, True, c.validated), c.fresh_requests(gw, True)),
            shared=(c.per_request(apps, False, c.bare_parsed), c.fresh_requests(gw)),
            shared_stream=(c.per_request(apps, True, c.bare_parsed), c.fresh_requests(gw, True)),
            how="read, pydantic validation, model, messages; bare: read, orjson, model, messages",
        ),
        Row(
            "admission (drain, breaker, working flag)",
            (c.admission(gw), None),
            (c.admission(gw), None),
            how="in-flight tracking, drain check x2, refuse_early (flags, breaker decisions)",
        ),
        Row("concurrency slot", (c.slot(gw), None), (c.slot(gw), None), how="limiter acquire + release"),
        Row(
            "route pick",
            (c.sync(lambda: gw[ROUTES].pick(set(), MODEL)), None),
            (c.sync(lambda: gw[ROUTES].pick(set(), MODEL)), None),
            how="RoutePool.pick, 1 route",
        ),
        Row(
            "ticket and events",
            (c.ticket(gw), None),
            (c.ticket(gw), None),
            how="breaker admit, answered, settle (an Outcome from classify)",
        ),
        Row(
            "metrics (HTTP and upstream)",
            (c.upstream_metrics(gw, False), None),
            (c.upstream_metrics(gw, True), None),
            how="route counters, histograms, tokens, overhead waits; + observe_http/overhead (added below)",
        ),
        Row(
            "deadlines (first token, idle, total, client write)",
            (c.deadlines(gw, TIMERS), None),
            (c.deadlines(gw, TIMERS), None),
            how=f"{TIMERS} Deadline scope(s) on the shared timers and the deadline arithmetic",
        ),
        Row(
            "client-write guard",
            (None, None),
            (a.write_guard(gw, STREAM_WRITES), a.unguarded_writes(STREAM_WRITES)),
            how=f"not used below 32 KiB; streamed: one guard, {STREAM_WRITES} writes and the end",
        ),
        Row(
            "SSE and JSON encoding",
            (c.sync(a.encode_json(True)), None),
            (c.sync(a.encode_sse(False)), None),
            shared=(c.sync(a.encode_json(False)), None),
            shared_stream=(c.sync(a.encode_sse(False)), None),
            how="completion object + orjson + Response; ChunkEncoder role, fragments, stop",
        ),
        Row(
            "token counting (usage)",
            (a.token_counts(gw), None),
            (a.token_counts(gw), None),
            how="prompt and completion tokens (tiktoken)",
        ),
        Row(
            "cutter (stop, max_tokens)",
            (c.sync(a.cutter(gw)), None),
            (c.sync(a.cutter(gw)), None),
            how=f"a Cutter fed {FRAGMENTS} fragments, no stop or limit",
        ),
        Row(
            "errors middleware",
            (c.middleware(gw, errors), same),
            (c.middleware(gw, errors), same),
            how="the try/except around every handler",
        ),
    ]


async def whole_request(apps: c.Apps, *, number: int, repeat: int) -> dict[str, float]:
    """µs per non-streamed request in process: the gateway's middlewares and handler, and the bare proxy's handler."""
    chain: Any = chat_completions
    for layer in reversed(apps.gateway.middlewares):  # the app's own, innermost first
        chain = functools.partial(layer, handler=chain)

    def through(app: Any, handler: Any) -> c.Make:
        async def make(n: int) -> c.Step:
            requests = iter([await chat_request(app) for _ in range(n)])

            async def step() -> object:
                request = next(requests)
                response = await handler(request)
                if response.status != 200:
                    raise RuntimeError(f"in-process request got {response.status}: {response.body!r}")
                if app is apps.gateway:
                    await add_request_id_header(request, response)
                return response

            return step

        return make

    gateway = await cost_us(through(apps.gateway, chain), c.fresh_requests(apps.gateway), number=number, repeat=repeat)
    bare = await cost_us(through(apps.bare, bare_proxy.chat), c.fresh_requests(apps.bare), number=number, repeat=repeat)
    return {"gateway_us": gateway, "bare_us": bare, "difference_us": gateway - bare}


async def measure(*, number: int, repeat: int, rate: float) -> dict[str, Any]:
    """Every row, the sampler's share at ``rate`` requests/s, and the whole request in process."""
    runner, gateway, _ = await started_gateway()
    try:
        quiet = c.quiet_app(gateway, lambda: create_app(Settings(probe_enabled=False, ui="off")))
        bare = bare_proxy.create_app("http://127.0.0.1:9/v3/chat-anonymous")
        bare[SESSION] = cast(Any, CannedSession())
        apps = c.Apps(gateway, quiet, bare)
        table: list[dict[str, Any]] = []
        for row in rows(apps):
            ns, st = row.nonstream, row.stream
            table.append(
                {
                    "feature": row.feature,
                    "nonstream_us": await cost_us(*ns, number=number, repeat=repeat),
                    "stream_us": await cost_us(*st, number=number, repeat=repeat),
                    "bare_nonstream_us": await cost_us(*row.shared, number=number, repeat=repeat),
                    "bare_stream_us": await cost_us(*row.shared_stream, number=number, repeat=repeat),
                    "how": row.how,
                }
            )
        # The HTTP metrics run in the observe middleware: with them minus the same middleware stubbed.
        http = await cost_us(c.middleware(gateway, observe), c.middleware(quiet, observe), number=number, repeat=repeat)
        metrics_row = next(r for r in table if r["feature"].startswith("metrics"))
        metrics_row["nonstream_us"] += http
        metrics_row["stream_us"] += http
        tick = await cost_us(c.sync(a.sampler_tick(gateway)), None, number=max(1, number // 100), repeat=repeat)
        interval = gateway[STATUS_SAMPLER].interval
        share = tick / (interval * rate)
        table.append(
            {
                "feature": "status-page sampler's share",
                "nonstream_us": share,
                "stream_us": share,
                "bare_nonstream_us": 0.0,
                "bare_stream_us": 0.0,
                "how": f"one sample {tick:.0f} µs every {interval:g} s, at {rate:g} requests/s",
            }
        )
        whole = await whole_request(apps, number=max(1, number // 4), repeat=repeat)
    finally:
        await runner.cleanup()
    return {"rows": table, "whole_request": whole, "number": number, "repeat": repeat, "rate": rate}


def render(result: dict[str, Any]) -> str:
    """The table as printed (and pasted into docs/benchmark.md)."""
    lines = [
        "| feature | non-streamed µs | streamed µs | bare proxy too (non-streamed / streamed) | how |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    totals = [0.0, 0.0, 0.0, 0.0]
    for row in result["rows"]:
        values = (row["nonstream_us"], row["stream_us"], row["bare_nonstream_us"], row["bare_stream_us"])
        totals = [t + v for t, v in zip(totals, values, strict=True)]
        lines.append(
            f"| {row['feature']} | {values[0]:.2f} | {values[1]:.2f} "
            f"| {values[2]:.2f} / {values[3]:.2f} | {row['how']} |"
        )
    lines.append(f"| **sum** | **{totals[0]:.1f}** | **{totals[1]:.1f}** | {totals[2]:.1f} / {totals[3]:.1f} | |")
    lines.append(
        f"| **gateway only (sum minus the bare proxy's)** | **{totals[0] - totals[2]:.1f}** | "
        f"**{totals[1] - totals[3]:.1f}** | | |"
    )
    whole = result["whole_request"]
    lines.append("")
    lines.append(
        f"whole non-streamed request in process (handlers, canned upstream): gateway {whole['gateway_us']:.1f} µs, "
        f"bare proxy {whole['bare_us']:.1f} µs, difference {whole['difference_us']:.1f} µs"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.costs [--number N] [--repeat R] [--rate RPS] [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--number", type=int, default=NUMBER, help="calls per timing loop (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="loops per case, best taken (default %(default)s)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s for the sampler's share per request")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--no-uvloop", dest="uvloop", action="store_false", help="asyncio's loop (the gateway uses uvloop)"
    )
    ns = parser.parse_args(argv)
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await measure(number=ns.number, repeat=ns.repeat, rate=ns.rate))

    event_loop_runner(ns.uvloop)(run())
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if ns.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
