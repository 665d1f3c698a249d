"""Command line: ``flowgpt-gateway serve | sim | demo | probe`` (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from gateway import __version__, listen
from gateway.app import create_app, make_route
from gateway.app_keys import INFLIGHT
from gateway.logs import configure_logging
from gateway.metrics import Metrics
from gateway.redact import mask_url
from gateway.route_config import parse_routes
from gateway.settings import Settings, describe_validation_error, env_name
from gateway.simulator import cli as sim_cli
from gateway.workers import EXIT_CANNOT_LISTEN, Supervisor, worker_command

log = logging.getLogger("gateway")
DEMO_ROUTES = ("primary", "backup")
# EX_USAGE of sysexits.h, from every command: probe's 2 means "no route works", so 2 cannot mean this.
EXIT_BAD_SETTINGS = 64
DESCRIPTION = (
    "The FlowGpt gateway: an OpenAI-compatible API in front of FlowGpt. "
    "Commands: serve (the gateway), sim (the upstream simulator), demo (both together), "
    "probe (one health probe of every route)."
)
ORPHAN_CHECK_SECONDS = 0.5

# CLI flag -> settings field; flags override GATEWAY_* variables.
_SETTING_FLAGS: dict[str, dict[str, Any]] = {
    "host": {"help": "listen address (GATEWAY_HOST)"},
    "port": {"type": int, "help": "listen port (GATEWAY_PORT)"},
    "upstream_url": {"help": "FlowGpt endpoint (GATEWAY_UPSTREAM_URL)"},
    "log_format": {"choices": ["text", "json"], "help": "GATEWAY_LOG_FORMAT"},
    "log_level": {"choices": ["DEBUG", "INFO", "WARNING", "ERROR"], "help": "GATEWAY_LOG_LEVEL"},
    "workers": {"type": int, "help": "processes serving one port; > 1 needs GATEWAY_REDIS_URL (GATEWAY_WORKERS)"},
}


def _add_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **_SETTING_FLAGS[name])


def load_settings(ns: argparse.Namespace, **forced: Any) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides = {name: getattr(ns, name) for name in _SETTING_FLAGS if getattr(ns, name, None) is not None}
    return Settings(**{**overrides, **forced})


def settings_epilog() -> str:
    """Where the settings are described, and every variable's name."""
    names = ", ".join(env_name(name) for name in Settings.model_fields)
    return (
        "Settings come from GATEWAY_* environment variables; the flags above override theirs. "
        "README.md, section Settings, describes each one and its default; GET /status shows the values "
        f"in force (secrets masked). The variables: {names}."
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="flowgpt-gateway", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the gateway (upstream: GATEWAY_UPSTREAM_URL)",
        description="Run the gateway until SIGTERM or SIGINT, then drain in-flight requests.",
        epilog=settings_epilog(),
    )
    _add_setting_flags(serve, list(_SETTING_FLAGS))
    serve.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)  # started by the supervisor
    sim = commands.add_parser("sim", help="run the FlowGpt-compatible upstream simulator")
    sim_cli.add_arguments(sim)
    demo = commands.add_parser(
        "demo",
        help="run the simulator and the gateway in front of it",
        description=(
            "Run the FlowGpt simulator and a gateway in front of it, to try the API without an upstream: "
            "the gateway always talks to the simulator, whatever GATEWAY_UPSTREAM_URL or GATEWAY_UPSTREAMS say."
        ),
        epilog=settings_epilog(),
    )
    _add_setting_flags(demo, ["host", "port", "log_format", "log_level"])
    demo.add_argument(
        "--sim-port", type=int, default=sim_cli.DEFAULT_PORT, help="simulator port (default: %(default)s)"
    )
    demo.add_argument("--chunk-delay", type=float, default=0.05, help="simulated delay between chunks")
    probe = commands.add_parser(
        "probe",
        help="probe every route once; exit 0 if all work, 1 if some fail, 2 if none works",
        description=(
            "Send one small chat request to every configured route (GATEWAY_UPSTREAM_URL or GATEWAY_UPSTREAMS) "
            "and report each; exit 0 if all work, 1 if some fail, 2 if none works."
        ),
        epilog=settings_epilog(),
    )
    _add_setting_flags(probe, ["upstream_url", "log_format", "log_level"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    ns = build_parser().parse_args(argv)
    if ns.command == "sim":
        return sim_cli.run(ns)
    try:
        settings = load_settings(ns)
    except ValidationError as exc:
        print(f"flowgpt-gateway: {describe_validation_error(exc)}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_format, settings.log_level, settings.scrubber())
    if ns.command == "serve" and settings.workers > 1 and not ns.as_worker:
        return _supervise(ns, settings)
    runner = _event_loop_runner(settings)
    if ns.command == "serve":
        return runner(serve(settings, reuse_port=ns.as_worker))
    if ns.command == "demo":
        return runner(demo(settings, sim_port=ns.sim_port, chunk_delay=ns.chunk_delay))
    return runner(probe_once(settings))


def _supervise(ns: argparse.Namespace, settings: Settings) -> int:
    if settings.port == 0:
        print("flowgpt-gateway: --workers needs a fixed port (0 would give each worker its own)", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    # Every flag, --workers too: each worker reports N in /status and on the status page.
    flags = [
        f"--{name.replace('_', '-')}={getattr(ns, name)}"
        for name in _SETTING_FLAGS
        if getattr(ns, name, None) is not None
    ]
    supervisor = Supervisor(
        worker_command(flags),
        workers=settings.workers,
        grace=settings.shutdown_timeout,
        host=settings.host,
        port=settings.port,
    )
    return supervisor.run()


def _event_loop_runner(settings: Settings) -> Callable[[Coroutine[Any, Any, int]], int]:
    if settings.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run
    return asyncio.run


async def serve(settings: Settings, *, banner: str | None = None, reuse_port: bool = False) -> int:
    """Serve until SIGTERM/SIGINT, then drain gracefully; returns the exit code.

    ``reuse_port``: a worker of ``serve --workers N``, sharing the port with its siblings.
    """
    try:
        sockets = listen.bind(settings.host, settings.port, reuse_port=reuse_port)
    except OSError as exc:
        print(f"flowgpt-gateway: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        # A worker's own code tells its supervisor to stop everything rather than restart it.
        return EXIT_CANNOT_LISTEN if reuse_port else 1
    app = create_app(settings)
    # The drain below gives in-flight requests their grace; aiohttp's own wait only closes idle keep-alives.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    try:
        await runner.setup()
    except BaseException:  # the sockets are nobody's until a site takes them
        for sock in sockets:
            sock.close()
        raise
    sites = [web.SockSite(runner, sock) for sock in sockets]
    for site in sites:
        await site.start()
    log.info(
        "gateway listening url=http://%s:%d routes=%s",
        settings.host,
        settings.port,
        ",".join(f"{spec.name}:{mask_url(spec.url)}" for spec in settings.routes()),
    )
    # Start-up objects (modules, pydantic schemas, metrics) live forever: keep them out of every
    # collection. Request garbage is freed by reference counting; at the default threshold (700)
    # gen-0 collections mostly walk the live objects of in-flight requests.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    if banner:
        print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan_watch = loop.create_task(_stop_when_orphaned(stop)) if reuse_port else None
    try:
        await stop.wait()
        log.info("shutting down grace_seconds=%s", settings.shutdown_timeout)
        tracker = app[INFLIGHT]
        tracker.begin_shutdown()  # readiness and liveness fail first,
        for site in sites:
            await site.stop()  # then no new connections,
        await tracker.drain(settings.shutdown_timeout)  # then in-flight work gets its grace
        await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if orphan_watch is not None:
            orphan_watch.cancel()
    log.info("stopped")
    return 0


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) drains and exits instead of serving on unwatched."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event fires when a parent dies
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)
    log.warning("supervisor gone, shutting down this worker supervisor_pid=%d", parent)
    stop.set()


async def demo(settings: Settings, *, sim_port: int, chunk_delay: float) -> int:
    """The simulator and the gateway in one process: the README's first command."""
    from gateway.simulator import SimOptions, Simulator

    async with Simulator(SimOptions(chunk_delay=chunk_delay), host="127.0.0.1", port=sim_port) as sim:
        # Two routes through the one simulator, so breaking one shows traffic moving to the other.
        # Always the simulator: a GATEWAY_UPSTREAMS in the environment must not send the demo elsewhere.
        routes = parse_routes([{"name": name, "url": sim.route_url(name)} for name in DEMO_ROUTES])
        gateway_settings = settings.model_copy(update={"upstreams": routes})
        base = f"http://{settings.host}:{settings.port}"
        faults = f"{sim.base_url}/_sim/faults?route={routes[0].name}"
        banner = "\n".join(
            [
                f"status page {base}/   (open it in a browser: what clients get, each route, the events)",
                f"simulator  {sim.url}   (faults: {sim.base_url}/_sim/faults?route=<route>)",
                f"routes     {', '.join(route.name for route in routes)}",
                f"gateway    {base}/v1   (metrics: {base}/metrics, status: {base}/status)",
                "try:",
                f"  curl -N {base}/v1/chat/completions -H 'Content-Type: application/json' "
                """-d '{"model": "gpt-3.5-turbo", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'""",
                f"""  curl -X POST '{faults}' -d '{{"http_status": 403, "http_body": "cloudflare"}}'  # break""",
                f"  curl -X DELETE '{faults}'   # heal it",
                "stop with Ctrl-C",
            ]
        )
        return await serve(gateway_settings, banner=banner)


async def probe_once(settings: Settings) -> int:
    """One probe of every route, at once: a line each; exit 0 if all work, 1 if some fail, 2 if none works."""
    metrics = Metrics(routes=tuple(spec.name for spec in settings.routes()))
    async with aiohttp.ClientSession() as session:
        routes = [make_route(session, spec, settings, metrics) for spec in settings.routes()]
        results = await asyncio.gather(*(route.prober.probe_once() for route in routes))
    for spec, result in zip(settings.routes(), results, strict=True):
        shown = mask_url(spec.url)
        if result.ok:
            print(f"ok route={spec.name} upstream={shown} latency={result.latency:.3f}s")
        else:
            print(f"failed route={spec.name} upstream={shown} latency={result.latency:.3f}s error={result.error}")
    failed = sum(not result.ok for result in results)
    return 0 if failed == 0 else 2 if failed == len(results) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
