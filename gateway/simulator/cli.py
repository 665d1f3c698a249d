"""Command-line front end: ``add_arguments`` for a (sub)parser, ``run`` to serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any, Final

from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator.faults import SimFaults
from gateway.simulator.options import SimOptions
from gateway.simulator.routes import ROUTE_NAME
from gateway.simulator.server import Simulator

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8090  # also the demo's simulator port
# The options' defaults come from SimOptions itself, so the flags cannot drift from it.
_OPTIONS: Final = SimOptions()
# Fault flags default to None so only the ones given override SimFaults' defaults.
_FAULT_FLAGS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--http-status", int, "answer every faulted request with this HTTP status instead of a stream"),
    ("--http-body", str, "body for --http-status; 'cloudflare' sends a Cloudflare challenge page"),
    ("--retry-after", float, "Retry-After seconds sent with --http-status (rounded up)"),
    ("--slow-first-token", float, "seconds between the response headers and the first line"),
    ("--stall-after", int, "send this many text chunks, then hang without closing"),
    ("--reset-after", int, "send this many text chunks, then drop the connection"),
    ("--garbage-ratio", float, "probability (0..1) of a non-JSON line before each text chunk"),
    ("--ratio", float, "fraction (0..1) of requests the faults apply to"),
    ("--count", int, "fault only this many requests, then heal by itself"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options and fault flags to ``parser``."""
    serve = parser.add_argument_group("simulator")
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to bind, 0 for any (default: %(default)s)")
    serve.add_argument(
        "--chunks", type=int, default=_OPTIONS.chunks, help="text chunks per answer (default: %(default)s)"
    )
    serve.add_argument(
        "--chunk-delay", type=float, default=_OPTIONS.chunk_delay, help="seconds between text chunks; 0: benchmark mode"
    )
    serve.add_argument("--seed", type=int, default=_OPTIONS.seed, help="RNG seed for --ratio and --garbage-ratio")
    serve.add_argument("--token", default=_OPTIONS.token, help="expected bearer token (default: the anonymous 'null')")
    serve.add_argument("--no-check-signature", action="store_true", help="accept unsigned requests")
    serve.add_argument(
        "--max-clock-skew", type=float, default=_OPTIONS.max_clock_skew, help="allowed x-timestamp skew in seconds"
    )
    serve.add_argument("--no-meta-events", action="store_true", help="do not start streams with non-text lines")
    serve.add_argument(
        "--max-routes", type=int, default=_OPTIONS.max_routes, help="distinct routes served, default included"
    )
    faults = parser.add_argument_group(
        "faults of the default route (all off by default; change at runtime via /_sim/faults[?route=<name>])"
    )
    for flag, kind, text in _FAULT_FLAGS:
        faults.add_argument(flag, type=kind, default=None, help=text)
    faults.add_argument("--html-200", action="store_true", default=None, help="answer 200 with an HTML page")
    faults.add_argument("--empty-stream", action="store_true", default=None, help="answer 200 NDJSON with no lines")


def options_from_args(ns: argparse.Namespace) -> tuple[SimOptions, SimFaults]:
    """Validated options and faults from parsed arguments (pydantic ``ValidationError`` if invalid)."""
    options = SimOptions(
        chunks=ns.chunks,
        chunk_delay=ns.chunk_delay,
        token=ns.token,
        check_signature=not ns.no_check_signature,
        max_clock_skew=ns.max_clock_skew,
        seed=ns.seed,
        meta_events=not ns.no_meta_events,
        max_routes=ns.max_routes,
    )
    given = {name: getattr(ns, name) for name in SimFaults.model_fields if getattr(ns, name, None) is not None}
    return options, SimFaults.model_validate(given)


async def _serve(sim: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not available on Windows; Ctrl+C then arrives as KeyboardInterrupt instead.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with sim:
        # The first line's format is parsed by monitoring/stack.py and the tests: append only.
        print(f"FlowGpt simulator on {sim.url} (faults: {sim.base_url}/_sim/faults)", flush=True)
        print(
            f"routes: {sim.base_url}/r/<route>{UPSTREAM_PATH} (<route> matches {ROUTE_NAME.pattern},"
            f" at most {sim.options.max_routes} routes; faults: /_sim/faults?route=<route>)",
            flush=True,
        )
        await stop.wait()


EXIT_BAD_SETTINGS: Final = 64  # the same code as the gateway's commands (EX_USAGE)


def run(ns: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 on a clean stop, 64 on bad settings (like the others), 1 if it cannot listen."""
    try:
        options, faults = options_from_args(ns)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"invalid simulator settings: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    sim = Simulator(options, faults, host=ns.host, port=ns.port)
    try:
        asyncio.run(_serve(sim))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"cannot listen on {ns.host}:{ns.port}: {exc}", file=sys.stderr)
        return 1
    return 0
