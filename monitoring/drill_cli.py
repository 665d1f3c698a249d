"""The alert drill's command line (``scripts/alert-drill``): run the scenarios, print a summary, exit 0 if all passed.

Scenarios: ``upstream-down`` (:class:`monitoring.drill.Drill`) and ``live-fails``
(:class:`monitoring.drill_live.LiveFailsDrill`), each on a stack of its own; ``all`` (the
default) runs both. Exit codes as in :mod:`monitoring.drill`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from monitoring.drill import Drill, DrillResult, Out
from monitoring.drill_live import LiveFailsDrill, live_options
from monitoring.processes import StackError
from monitoring.stack import Stack, StackOptions


def summary(result: DrillResult) -> list[str]:
    """A table of when each alert fired and resolved: seconds after the break and after the heal."""

    def after(moment: float | None, origin: float | None) -> str:
        return "-" if moment is None or origin is None else f"+{moment - origin:.1f}s"

    lines = [
        f"  {'alert':<30} {'receiver':<9} {'pending':>8} {'firing':>8} {'webhook':>8}   {'resolved':>8} {'webhook':>8}",
        f"  {'':<30} {'':<9} {'(after the break)':>26}   {'(after the heal)':>17}",
    ]
    for track in result.tracks.values():
        broke, healed = result.broke_at, result.healed_at
        lines.append(
            f"  {track.alertname:<30} {track.receiver:<9} {after(track.pending_at, broke):>8} "
            f"{after(track.firing_at, broke):>8} {after(track.notified_firing_at, broke):>8}   "
            f"{after(track.inactive_at, healed):>8} {after(track.notified_resolved_at, healed):>8}"
        )
    return lines


def describe_stack(stack: Stack) -> list[str]:
    """Where each piece of the stack listens."""
    pids = {process.name: process.pid for process in stack.processes}
    return [
        f"  simulator     {stack.sim_url:<24} pid {pids.get('simulator')}",
        f"  gateway       {stack.gateway_url:<24} pid {pids.get('gateway')}",
        f"  alertmanager  {stack.alertmanager_url:<24} pid {pids.get('alertmanager')}",
        f"  prometheus    {stack.prometheus_url:<24} pid {pids.get('prometheus')}",
        f"  webhook       {stack.webhook.url:<24} (in this process)",
        f"  files         {stack.workdir}",
    ]


async def drill(options: StackOptions, *, limit: float, out: Out = print, scenario: type[Drill] = Drill) -> int:
    """Start the stack, run the ``scenario`` within ``limit`` seconds overall, stop everything; the exit code."""
    stack = Stack(options)
    overrides = ", ".join(f"{name} {value}" for name, value in options.for_overrides.items())
    out(f"alert drill, scenario {scenario.name!r}: starting simulator, gateway, Alertmanager, Prometheus and a webhook")
    out(f"  rules: monitoring/rules/*.yml as shipped, except for: {overrides}")
    started = time.monotonic()
    runner: Drill | None = None
    try:
        async with asyncio.timeout(limit):
            try:
                await stack.start()
            except StackError as exc:
                out(f"alert drill: FAILED to start the stack: {exc}")
                return 2
            out(f"stack up in {time.monotonic() - started:.1f}s:")
            for line in describe_stack(stack):
                out(line)
            runner = scenario(stack, out=out)
            result = await runner.run()
            if not result.ok:
                out(stack.log_tails())
    except TimeoutError:
        out(stack.log_tails())
        result = runner.result if runner is not None else DrillResult(tracks={})
        result.problems.append(f"not finished within the overall limit of {limit:g}s (--timeout)")
    finally:
        await stack.stop()
        stack.kill_all()
    out("summary:")
    for line in summary(result):
        out(line)
    if result.ok:
        out(f"alert drill {scenario.name!r}: PASSED in {time.monotonic() - started:.1f}s; everything stopped")
        return 0
    out(f"alert drill {scenario.name!r}: FAILED (everything stopped):")
    for problem in result.problems:
        out(f"  - {problem}")
    return 1


def _upstream_down(workdir: Path | None) -> tuple[type[Drill], StackOptions]:
    return Drill, StackOptions(workdir=workdir)


def _live_fails(workdir: Path | None) -> tuple[type[Drill], StackOptions]:
    return LiveFailsDrill, live_options(workdir)


# Each scenario: its drill and the stack it runs on, for a work directory (None: temporary).
SCENARIOS: Final[Mapping[str, Callable[[Path | None], tuple[type[Drill], StackOptions]]]] = {
    "upstream-down": _upstream_down,
    "live-fails": _live_fails,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``scripts/alert-drill``)."""
    parser = argparse.ArgumentParser(prog="alert-drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=150.0, help="overall limit in seconds (default %(default)s)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep configs, data and logs here (default: a temporary directory)"
    )
    parser.add_argument(
        "--scenario",
        choices=("all", *SCENARIOS),
        default="all",
        help="upstream-down: probes and traffic fail; live-fails: live traffic fails while the probes pass",
    )
    ns = parser.parse_args(argv)
    chosen = list(SCENARIOS) if ns.scenario == "all" else [ns.scenario]

    terminated: list[int] = []

    async def run() -> int:
        task = asyncio.current_task()
        if task is not None:

            def on_sigterm() -> None:
                terminated.append(signal.SIGTERM)
                task.cancel()

            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        code = 0
        for name in chosen:
            scenario, options = SCENARIOS[name](ns.workdir / name if ns.workdir is not None else None)
            code = max(
                code,
                await drill(options, limit=ns.timeout, out=lambda line: print(line, flush=True), scenario=scenario),
            )
        return code

    try:
        return asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("alert drill: interrupted; everything it started has been stopped", file=sys.stderr)
        return 128 + (terminated[0] if terminated else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
