"""The fleet section: workers' throughput, and what sharing state through Redis costs a request.

* ``workers``: non-streaming c=64 through ``serve --workers 1`` and ``--workers 2`` (both with
  Redis), paired per repetition; the ratio says what a second core buys on this machine.
* ``redis``: c=1 through a gateway without Redis and one with it, paired: the request path
  makes no Redis call, so the median paired difference should be noise.
* ``redis_paused``: c=16 p99 through the Redis gateway, then again with Redis stopped by
  SIGSTOP (every call to it hangs): only background calls wait, so p99 should not move.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import time
from typing import Any

from bench.harness import BenchRun
from monitoring.processes import ManagedProcess as Proc
from monitoring.processes import free_port


def start_redis(bench: BenchRun) -> Proc | None:
    """A loopback redis-server for this run, or None (with a note) when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("fleet: redis-server not found (scripts/setup --with-tools installs it); section skipped")
        return None
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = bench._spawn("redis", argv, dict(os.environ), port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer PING; see {proc.log_path}")


def run_fleet(bench: BenchRun) -> dict[str, Any] | None:
    """All three measurements; None when Redis is unavailable."""
    redis = start_redis(bench)
    if redis is None:
        return None
    redis_env = {"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"}
    upstream = bench.sim_url(bench.sim)
    ns = bench.ns
    for target, env, workers in (
        ("workers1", redis_env, 1),
        ("workers2", redis_env, 2),
        ("redis_off", {}, 1),
        ("redis_on", redis_env, 1),
    ):
        server = bench._start_gateway(target, upstream, max_concurrency=None, extra_env=env, workers=workers)
        bench.urls[target], bench.servers[target] = bench.proxy_url(server), server
        bench._nonstream(target, 16, ns.warmup)
    reps = max(ns.reps, 3)

    print("fleet: non-streaming c=64, serve --workers 1 vs 2 (both with Redis)", flush=True)
    rps: dict[str, list[float]] = {"workers1": [], "workers2": []}
    for rep in range(reps):
        for target in ("workers1", "workers2") if rep % 2 == 0 else ("workers2", "workers1"):
            record = bench.measure("fleet_c64", target, rep, lambda t=target: bench._nonstream(t, 64, ns.duration))
            rps[target].append(record["result"]["rps"])

    print("fleet: non-streaming c=1, without Redis vs with Redis", flush=True)
    p50: dict[str, list[float]] = {"redis_off": [], "redis_on": []}
    for rep in range(reps):
        for target in ("redis_off", "redis_on") if rep % 2 == 0 else ("redis_on", "redis_off"):
            record = bench.measure("fleet_c1", target, rep, lambda t=target: bench._nonstream(t, 1, ns.duration))
            p50[target].append(record["result"]["latency_ms"]["p50"])

    print("fleet: non-streaming c=16 p99 through the Redis gateway, Redis running vs stopped (SIGSTOP)", flush=True)
    p99: dict[str, list[float]] = {"redis_on": [], "redis_paused": []}
    bench.urls["redis_paused"], bench.servers["redis_paused"] = bench.urls["redis_on"], bench.servers["redis_on"]
    for rep in range(reps):
        record = bench.measure("fleet_c16", "redis_on", rep, lambda: bench._nonstream("redis_on", 16, ns.duration))
        p99["redis_on"].append(record["result"]["latency_ms"]["p99"])
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            record = bench.measure(
                "fleet_c16", "redis_paused", rep, lambda: bench._nonstream("redis_paused", 16, ns.duration)
            )
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        p99["redis_paused"].append(record["result"]["latency_ms"]["p99"])
        time.sleep(1.0)  # let the gateway reconnect before the next "running" measurement

    return {
        "rps_c64": {target: statistics.median(values) for target, values in rps.items()},
        "workers2_vs_1": statistics.median(b / a for a, b in zip(rps["workers1"], rps["workers2"], strict=True)),
        "p50_c1_ms": {target: statistics.median(values) for target, values in p50.items()},
        "redis_added_p50_ms": statistics.median(
            b - a for a, b in zip(p50["redis_off"], p50["redis_on"], strict=True)
        ),
        "p99_c16_ms": {target: statistics.median(values) for target, values in p99.items()},
        "paused_vs_running_p99": statistics.median(
            b / a for a, b in zip(p99["redis_on"], p99["redis_paused"], strict=True)
        ),
    }


def render(fleet: dict[str, Any]) -> list[str]:
    """Lines for the report."""
    return [
        f"fleet: c=64 {fleet['rps_c64']['workers1']:.0f}/s with 1 worker, {fleet['rps_c64']['workers2']:.0f}/s "
        f"with 2 (x{fleet['workers2_vs_1']:.2f}, median of paired runs)",
        f"fleet: c=1 p50 {fleet['p50_c1_ms']['redis_off']:.3f} ms without Redis, "
        f"{fleet['p50_c1_ms']['redis_on']:.3f} ms with it ({fleet['redis_added_p50_ms']:+.3f} ms paired)",
        f"fleet: c=16 p99 {fleet['p99_c16_ms']['redis_on']:.3f} ms with Redis running, "
        f"{fleet['p99_c16_ms']['redis_paused']:.3f} ms with it stopped (x{fleet['paused_vs_running_p99']:.2f})",
    ]
