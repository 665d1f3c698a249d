"""Soak the gateway in front of a flapping upstream: every request must end, in time, with an allowed status.

The simulator alternates between healthy and failing every ``flap_min``..``flap_max``
seconds (503s, resets and stalls mid-stream, slow first tokens, garbage lines, some
only for a fraction of requests), while ``concurrency`` workers send ``requests``
chat requests, half of them streaming. Gateway and simulator share this process,
so RSS is measured for both together.

The short run is part of the test suite (tests/test_soak.py); the long one is::

    .venv/bin/python -m tests.soak --requests 5000 --concurrency 100

With ``--replicas 2`` two gateways share a real redis-server (the workers alternate between
them), which is paused and killed in turn during the measured run: no request may be lost.

which prints a summary and exits 1 when an invariant fails (see docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.app_keys import METRICS, ROUTES
from gateway.events import WorkingChanged
from gateway.openai_schema import chat_request_body
from gateway.settings import Settings
from gateway.simulator import SimFaults, SimOptions, Simulator
from tests.redis_support import RedisServer

ALLOWED_STATUSES: Final = frozenset({200, 429, 502, 503, 504})
# The first failing phase always fails every request, so the breaker must open during it.
FAULT_CYCLE: Final[tuple[SimFaults, ...]] = (
    SimFaults(http_status=503, http_body="<html><body>503 Service Unavailable</body></html>"),
    SimFaults(reset_after=2, garbage_ratio=0.3),
    SimFaults(stall_after=1),
    SimFaults(http_status=503, ratio=0.6),
    SimFaults(garbage_ratio=1.0, reset_after=3, ratio=0.5),
    SimFaults(slow_first_token=1.0, ratio=0.5),
    SimFaults(http_status=429, retry_after=1),
)
# Short deadlines keep the run brisk; the client gives each request this much on top of the total.
GATEWAY_SETTINGS: Final[dict[str, Any]] = {
    "timeout_first_token": 0.5,
    "timeout_idle": 0.5,
    "timeout_total": 2.0,
    "retry_max": 1,
    "retry_backoff_base": 0.01,
    "retry_backoff_max": 0.05,
    "breaker_fail_max": 5,
    "breaker_reset_seconds": 0.3,
    "breaker_reset_max_seconds": 1.0,
    "probe_enabled": True,
    "probe_interval": 0.25,
    "probe_unhealthy_interval": 0.1,
    "probe_unhealthy_threshold": 2,
    "max_concurrency": 64,
    "queue_timeout": 0.2,
    "uvloop": False,
}
CLIENT_GRACE: Final = 2.0
RECOVERY_SECONDS: Final = 5.0
SHUTDOWN_LIMIT: Final = 20.0  # a gateway's close (drain, Redis, probes, sessions) must end within this


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """How hard and how long to push."""

    requests: int = 800
    concurrency: int = 50
    think: float = 1.0  # a worker pauses uniformly up to this long between requests
    flap_min: float = 0.5
    flap_max: float = 2.0
    stream_ratio: float = 0.5
    chunk_delay: float = 0.005
    warmup_requests: int = 200
    seed: int = 1
    routes: int = 1  # with more, only the first route flaps and the others stay healthy
    replicas: int = 1  # with more, they share a real redis-server, paused and killed in turn during the run

    @property
    def flapping_route(self) -> str:
        """The route whose upstream the soak breaks and heals."""
        return "default" if self.routes == 1 else "r0"


@dataclass
class SoakReport:
    """What happened; ``problems()`` lists every broken invariant."""

    config: SoakConfig
    deadline: float  # seconds a client waits before it calls a request hung
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    working_flips: list[bool] = field(default_factory=list)
    breaker_opened: float = 0.0
    breaker_closed: float = 0.0
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    error_logs: list[str] = field(default_factory=list)
    recovered: bool = False
    duration: float = 0.0
    redis_events: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status (with several routes, the other routes were healthy all along)."""
        return sum(count for key, count in self.outcomes.items() if key.startswith("5"))

    @property
    def broken_streams(self) -> int:
        """Streams that started and then ended with an error event (nothing can be replayed then)."""
        return sum(count for key, count in self.outcomes.items() if key.startswith("200 stream error"))

    @property
    def requests(self) -> int:
        """Requests finished (or given up on) in the measured run."""
        return sum(self.outcomes.values())

    def p(self, quantile: float) -> float:
        """A latency quantile in seconds (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def problems(self) -> list[str]:
        """Every broken invariant, empty when the run was clean."""
        found = list(self.violations)
        if self.requests != self.config.requests:
            found.append(f"{self.requests} of {self.config.requests} requests finished")
        if self.breaker_opened < 1 or self.breaker_closed < 1:
            found.append(f"breaker did not flap (opened {self.breaker_opened:g}, closed {self.breaker_closed:g})")
        if False not in self.working_flips or self.working_flips[-1:] != [True]:
            found.append(f"working flag did not follow the upstream: flips {self.working_flips}")
        if not self.recovered:
            found.append("gateway did not recover after the upstream healed")
        if self.error_logs:
            found.append(f"{len(self.error_logs)} ERROR log records, first: {self.error_logs[0]}")
        return found

    def summary(self) -> str:
        """A few human-readable lines."""
        outcomes = ", ".join(f"{key}: {count}" for key, count in sorted(self.outcomes.items()))
        return "\n".join(
            [
                f"requests {self.requests} at concurrency {self.config.concurrency} in {self.duration:.1f} s",
                f"outcomes {outcomes}",
                f"latency p50 {self.p(0.5) * 1000:.0f} ms, p99 {self.p(0.99) * 1000:.0f} ms, "
                f"max {max(self.latencies, default=0) * 1000:.0f} ms (deadline {self.deadline * 1000:.0f} ms)",
                f"upstream phases {len(self.phases)}; breaker opened {self.breaker_opened:g}x, "
                f"closed {self.breaker_closed:g}x; working flips {len(self.working_flips)}",
                f"RSS start {self.rss_start_kib / 1024:.1f} MiB, end {self.rss_end_kib / 1024:.1f} MiB "
                f"(+{(self.rss_end_kib - self.rss_start_kib) / 1024:.1f} MiB)",
                f"ERROR log records {len(self.error_logs)}; recovered after healing: {self.recovered}",
                *(
                    [
                        f"routes {self.config.routes} (only {self.config.flapping_route} flaps): "
                        f"5xx answers {self.server_errors} while a healthy route was available, "
                        f"streams broken after their first token {self.broken_streams}"
                    ]
                    if self.config.routes > 1
                    else []
                ),
                *(
                    [
                        f"replicas {self.config.replicas} sharing Redis; Redis during the run: "
                        f"{', '.join(self.redis_events) or 'untouched'}"
                    ]
                    if self.config.replicas > 1
                    else []
                ),
            ]
        )


def rss_kib() -> int:
    """This process's resident set size from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _ErrorRecords(logging.Handler):
    """Keeps every ERROR record and every record that carries a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(f"{record.name}: {record.getMessage()}")


async def _flap(sim: Simulator, config: SoakConfig, rng: random.Random, phases: list[str]) -> None:
    """Heal and break the flapping route's upstream in turn until cancelled; leaves it healthy."""
    faults = iter(FAULT_CYCLE * 1000)
    route = config.flapping_route
    try:
        while True:
            sim.set_faults(SimFaults(), route=route)
            phases.append("healthy")
            await asyncio.sleep(rng.uniform(config.flap_min, config.flap_max))
            fault = next(faults)
            sim.set_faults(fault, route=route)
            phases.append(str(fault.model_dump(exclude_defaults=True)))
            await asyncio.sleep(rng.uniform(config.flap_min, config.flap_max))
    finally:
        sim.set_faults(SimFaults(), route=route)


async def _one(session: aiohttp.ClientSession, url: str, *, stream: bool, deadline: float, report: SoakReport) -> None:
    """One request, classified; anything but an allowed, complete answer is a violation."""
    body = chat_request_body("soak " * 8, stream=stream)
    started = time.monotonic()
    outcome: str
    try:
        async with asyncio.timeout(deadline):
            async with session.post(url, json=body) as response:
                raw = await response.read()
                outcome = _classify(response.status, raw, stream=stream)
    except TimeoutError:
        outcome = "hang"
    except aiohttp.ClientError as exc:
        outcome = f"client error {type(exc).__name__}"
    elapsed = time.monotonic() - started
    report.latencies.append(elapsed)
    report.outcomes[outcome] += 1
    if not outcome.startswith(("200", "429", "502", "503", "504")) or outcome.endswith("?"):
        report.violations.append(f"{outcome} after {elapsed:.2f} s")


def _classify(status: int, raw: bytes, *, stream: bool) -> str:
    """``200``, ``200 stream error <code>``, ``<status> <code>``; a trailing ``?`` marks a malformed answer."""
    if status not in ALLOWED_STATUSES:
        return f"{status} not allowed"
    if status != 200:
        try:
            return f"{status} {orjson.loads(raw)['error']['code']}"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return f"{status} ?"
    if not stream:
        try:
            return "200" if orjson.loads(raw)["choices"][0]["message"]["content"] else "200 empty?"
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            return "200 ?"
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    if events[-1:] == [b"[DONE]"]:
        return "200 stream"
    try:
        return f"200 stream error {orjson.loads(events[-1])['error']['code']}"
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return "200 stream truncated?"


async def _drive(
    session: aiohttp.ClientSession,
    urls: list[str],
    config: SoakConfig,
    total: int,
    report: SoakReport,
    rng: random.Random,
) -> None:
    remaining = iter(range(total))  # shared: each worker takes the next request number
    deadline = report.deadline

    async def worker(url: str) -> None:
        for _ in remaining:
            await asyncio.sleep(rng.uniform(0, config.think))
            await _one(session, url, stream=rng.random() < config.stream_ratio, deadline=deadline, report=report)

    # Workers are spread over the replicas, as a load balancer would spread connections.
    await asyncio.gather(*(worker(urls[index % len(urls)]) for index in range(config.concurrency)))


async def _recover(session: aiohttp.ClientSession, url: str, server_app: Any, route_name: str) -> bool:
    """With the upstream healthy again, the route's breaker closes, its flag is on and requests succeed."""
    body = chat_request_body("are you back?")
    give_up = time.monotonic() + RECOVERY_SECONDS
    while time.monotonic() < give_up:
        async with session.post(url, json=body) as response:
            await response.read()
            ok = response.status == 200
        route = server_app[ROUTES][route_name]
        if ok and route.breaker.state == "closed" and route.flag.working:
            return True
        await asyncio.sleep(0.05)
    return False


async def run_soak(config: SoakConfig) -> SoakReport:
    """Run the soak and return its report (never raises for a broken invariant: see ``problems()``)."""
    deadline = GATEWAY_SETTINGS["timeout_total"] + CLIENT_GRACE
    report = SoakReport(config, deadline=deadline)
    rng = random.Random(config.seed)
    errors = _ErrorRecords()
    logging.getLogger().addHandler(errors)
    redis = RedisServer() if config.replicas > 1 else None
    try:
        if redis is not None:
            redis.start()
        async with Simulator(SimOptions(chunk_delay=config.chunk_delay, seed=config.seed)) as sim:
            routes = [{"name": f"r{i}", "url": sim.route_url(f"r{i}")} for i in range(config.routes)]
            upstreams = json.dumps(routes) if config.routes > 1 else ""
            upstream: dict[str, Any] = {"upstreams": upstreams} if upstreams else {"upstream_url": sim.url}
            if redis is not None:
                upstream |= {"redis_url": redis.url, "redis_prefix": redis.prefix()}
            apps = [create_app(Settings(**upstream, **GATEWAY_SETTINGS)) for _ in range(config.replicas)]
            servers = [TestServer(app, host="127.0.0.1") for app in apps]
            for server in servers:
                await server.start_server()
            flapping = config.flapping_route
            apps[0][ROUTES][flapping].events.subscribe(
                WorkingChanged, lambda event: report.working_flips.append(event.working)
            )
            connector = aiohttp.TCPConnector(limit=0)
            try:
                async with aiohttp.ClientSession(connector=connector) as session:
                    urls = [str(server.make_url("/v1/chat/completions")) for server in servers]
                    warmup = SoakReport(config, deadline=deadline)
                    await _phase(session, urls, config, config.warmup_requests, sim, rng, warmup)
                    for url, app in zip(urls, apps, strict=True):
                        await _recover(session, url, app, flapping)
                    report.working_flips.clear()
                    opened, closed = _transitions(apps, flapping)
                    gc.collect()
                    report.rss_start_kib = rss_kib()
                    started = time.monotonic()
                    chaos = None if redis is None else asyncio.create_task(_redis_chaos(redis, report.redis_events))
                    try:
                        await _phase(session, urls, config, config.requests, sim, rng, report)
                    finally:
                        if chaos is not None:
                            chaos.cancel()
                            await asyncio.gather(chaos, return_exceptions=True)
                    report.duration = time.monotonic() - started
                    recovered = [await _recover(session, url, app, flapping) for url, app in zip(urls, apps, strict=True)]
                    report.recovered = all(recovered)
                    gc.collect()
                    report.rss_end_kib = rss_kib()
                    opened_after, closed_after = _transitions(apps, flapping)
                    report.breaker_opened, report.breaker_closed = opened_after - opened, closed_after - closed
            finally:
                for server in servers:
                    await _close_or_report(server, report)
    finally:
        if redis is not None:
            redis.stop()
        logging.getLogger().removeHandler(errors)
    report.error_logs = errors.records
    return report


def task_stacks() -> list[str]:
    """Where every task of this loop waits, innermost last (for a run that hung)."""
    stacks = []
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in frames)
        stacks.append(f"{task.get_name()}: {where}")
    return stacks


async def run_soak_within(config: SoakConfig, limit: float) -> SoakReport:
    """``run_soak``, failing with every task's stack (instead of hanging) if it takes longer than ``limit``."""
    runner = asyncio.ensure_future(run_soak(config))
    done, _ = await asyncio.wait({runner}, timeout=limit)
    if not done:
        stacks = task_stacks()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        raise AssertionError(f"the soak did not end within {limit:g} s; tasks: {stacks}")
    return runner.result()


async def _close_or_report(server: TestServer, report: SoakReport) -> None:
    """Close a gateway; one that takes longer than SHUTDOWN_LIMIT is a violation, with every task's stack."""
    try:
        async with asyncio.timeout(SHUTDOWN_LIMIT):
            await server.close()
    except TimeoutError:
        report.violations.append(f"a gateway did not close within {SHUTDOWN_LIMIT:g} s; tasks: {task_stacks()}")


def _transitions(apps: list[Any], route: str) -> tuple[float, float]:
    """Opens and closes of ``route`` decided by the replicas themselves (a peer's trip adopted is not one)."""
    opened = closed = 0.0
    for app in apps:
        metrics = app[METRICS].registry
        opened += metrics.get_sample_value("gateway_breaker_transitions_total", _to("open", route)) or 0.0
        closed += metrics.get_sample_value("gateway_breaker_transitions_total", _to("closed", route)) or 0.0
    return opened, closed


async def _redis_chaos(redis: RedisServer, events: list[str]) -> None:
    """Until cancelled: Redis paused (every call hangs) for 1.5 s, then killed and restarted empty, in turn."""
    try:
        while True:
            await asyncio.sleep(2.0)
            redis.pause()
            events.append("paused")
            await asyncio.sleep(1.5)
            redis.resume()
            events.append("resumed")
            await asyncio.sleep(2.0)
            redis.kill()
            events.append("killed")
            await asyncio.sleep(1.0)
            await asyncio.to_thread(redis.start)
            events.append("restarted")
    finally:
        if redis.paused:
            redis.resume()


def _to(state: str, route: str) -> dict[str, str]:
    return {"provider": "flowgpt", "route": route, "to_state": state, "source": "local"}


async def _phase(
    session: aiohttp.ClientSession,
    urls: list[str],
    config: SoakConfig,
    total: int,
    sim: Simulator,
    rng: random.Random,
    report: SoakReport,
) -> None:
    flapper = asyncio.create_task(_flap(sim, config, rng, report.phases))
    try:
        await _drive(session, urls, config, total, report, rng)
    finally:
        flapper.cancel()
        await asyncio.gather(flapper, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.soak``: run, print the summary, exit 1 on a broken invariant."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    defaults = SoakConfig()  # the long run differs only in --requests and --concurrency
    parser.add_argument("--think", type=float, default=defaults.think, help="max pause between a worker's requests (s)")
    parser.add_argument("--flap-min", type=float, default=defaults.flap_min)
    parser.add_argument("--flap-max", type=float, default=defaults.flap_max)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--routes", type=int, default=defaults.routes, help="routes; with more than one only the first flaps")
    parser.add_argument(
        "--replicas", type=int, default=defaults.replicas, help="gateways sharing a redis-server that is paused and killed"
    )
    ns = parser.parse_args(argv)
    config = SoakConfig(
        requests=ns.requests,
        concurrency=ns.concurrency,
        think=ns.think,
        flap_min=ns.flap_min,
        flap_max=ns.flap_max,
        seed=ns.seed,
        routes=ns.routes,
        replicas=ns.replicas,
        warmup_requests=min(500, max(ns.requests // 10, 1)),
    )
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    report = asyncio.run(run_soak(config))
    print(report.summary())
    problems = report.problems()
    for problem in problems[:20]:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
