"""Half-open trials across a fleet: 4 gateway processes, one route breaking and healing for a minute.

    .venv/bin/python -m bench.fleet_trials [--gateway-src DIR] [--processes 4] [--seconds 60]

Each gateway (``serve``, its own process, all sharing one redis-server) gets a client sending one
chat after another (50 ms apart). The route's upstream (the simulator, in this process) fails
every request (HTTP 500) for 3 to 5 s, then is healthy for 3 to 5 s, in turn (seeded). Probes are off, so only live
traffic decides. Printed:

* trials per open period: the requests that reached the upstream while it was broken, grouped
  into bursts (a gap of more than half the open period starts a new one); the first burst of each
  broken phase is the trip itself and is left out; the others are the trials of one period each;
* recovery: from each heal to the first 200 on every process (the slowest process decides).

``--gateway-src`` runs another checkout's gateway package (say, the one before a change) against
the same harness, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from gateway.openai_schema import chat_request_body
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import free_port

REPO = Path(__file__).resolve().parent.parent
BROKEN, HEALTHY = 4.0, 4.0
RESET_SECONDS = 1.0


def _gateway(src: Path, port: int, upstream: str, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "GATEWAY_PORT": str(port),
        "GATEWAY_UPSTREAM_URL": upstream,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_PROBE_ENABLED": "false",
        "GATEWAY_BREAKER_FAIL_MAX": "2",
        "GATEWAY_BREAKER_RESET_SECONDS": str(RESET_SECONDS),
        "GATEWAY_RETRY_MAX": "0",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=src, env=env, stdout=out, stderr=out)


async def _ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


async def _client(session: aiohttp.ClientSession, url: str, until: float, answers: list[tuple[float, int]]) -> None:
    body = chat_request_body("trial?")
    while time.monotonic() < until:
        try:
            async with session.post(url, json=body) as response:
                await response.read()
                answers.append((time.monotonic(), response.status))
        except aiohttp.ClientError:
            answers.append((time.monotonic(), 0))
        await asyncio.sleep(0.05)


async def _watch(sim: Simulator, until: float, arrivals: list[float]) -> None:
    """Timestamps of upstream requests, from the simulator's counter polled every 2 ms."""
    stats = sim.route_stats("a")
    seen = stats.requests_total
    while time.monotonic() < until:
        now = stats.requests_total
        arrivals.extend([time.monotonic()] * (now - seen))
        seen = now
        await asyncio.sleep(0.002)


async def _flap(sim: Simulator, until: float, phases: list[tuple[str, float]]) -> None:
    # Phase lengths vary (seeded, so every run and checkout gets the same ones): a heal must not
    # always land at the same point of an open period.
    rng = random.Random(7)
    while time.monotonic() < until:
        sim.set_faults(SimFaults(http_status=500), route="a")
        phases.append(("broken", time.monotonic()))
        await asyncio.sleep(BROKEN * rng.uniform(0.75, 1.25))
        sim.set_faults(SimFaults(), route="a")
        phases.append(("healed", time.monotonic()))
        await asyncio.sleep(HEALTHY * rng.uniform(0.75, 1.25))


def _bursts(times: list[float]) -> list[int]:
    sizes: list[int] = []
    last = None
    for moment in times:
        if last is None or moment - last > RESET_SECONDS / 2:
            sizes.append(0)
        sizes[-1] += 1
        last = moment
    return sizes


def _redis(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "redis-server"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL)


async def run(src: Path, processes: int, seconds: float) -> None:
    """Start everything, drive it for ``seconds``, print the figures."""
    redis_port = free_port()
    redis = _redis(redis_port)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    gateways: list[subprocess.Popen[bytes]] = []
    try:
        async with Simulator() as sim, aiohttp.ClientSession() as session:
            ports = [free_port() for _ in range(processes)]
            for index, port in enumerate(ports):
                log = logs / f"fleet-trials-{index}.log"
                gateways.append(_gateway(src, port, sim.route_url("a"), f"redis://127.0.0.1:{redis_port}/0", log))
            for port in ports:
                await _ready(session, f"http://127.0.0.1:{port}/healthz")
            await asyncio.sleep(1.0)  # every process has joined the fleet
            until = time.monotonic() + seconds
            answers: list[list[tuple[float, int]]] = [[] for _ in ports]
            arrivals: list[float] = []
            phases: list[tuple[str, float]] = []
            await asyncio.gather(
                _flap(sim, until, phases),
                _watch(sim, until, arrivals),
                *(
                    _client(session, f"http://127.0.0.1:{port}/v1/chat/completions", until, answers[index])
                    for index, port in enumerate(ports)
                ),
            )
    finally:
        for gateway in gateways:
            gateway.terminate()
        for gateway in gateways:
            gateway.wait(timeout=20)
        redis.terminate()
        redis.wait(timeout=10)
    _report(src, processes, phases, arrivals, answers)


def _report(
    src: Path,
    processes: int,
    phases: list[tuple[str, float]],
    arrivals: list[float],
    answers: list[list[tuple[float, int]]],
) -> None:
    trials: list[int] = []
    recoveries: list[float] = []
    for (kind, start), (_, end) in zip(phases, [*phases[1:], ("end", float("inf"))], strict=True):
        if kind == "broken":
            trials += _bursts([t for t in arrivals if start <= t < end])[1:]
        else:
            firsts = [
                min((t for t, status in mine if status == 200 and start <= t < end), default=None) for mine in answers
            ]
            if all(first is not None for first in firsts):
                served = sorted(first - start for first in firsts if first is not None)
                recoveries.append(served[-1])
                print("heal: first 200 per process after " + ", ".join(f"{delay:.2f}" for delay in served) + " s")
    distribution = collections.Counter(trials)
    print(f"gateway source {src}; {processes} processes; broken and healthy in turn for 3-5 s each")
    shares = ", ".join(f"{size}: {count}x" for size, count in sorted(distribution.items()))
    print(f"open period {RESET_SECONDS:g} s; periods with trials: {len(trials)}; trials per period: {shares}")
    if trials:
        print(f"trials per period: mean {statistics.mean(trials):.2f}, max {max(trials)}")
    if recoveries:
        print(
            f"heal -> first 200 on every process: median {statistics.median(recoveries):.2f} s, "
            f"max {max(recoveries):.2f} s over {len(recoveries)} heals"
        )
    statuses = collections.Counter(status for mine in answers for _, status in mine)
    print("client statuses: " + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.fleet_trials``."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_trials", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway-src", type=Path, default=REPO, help="directory holding the gateway package to run")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    ns = parser.parse_args(argv)
    asyncio.run(run(ns.gateway_src.resolve(), ns.processes, ns.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
