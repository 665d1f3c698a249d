"""The tracing section: what traces cost a request, and the gateway's own-time metric against the benchmark.

* ``tracing_c1`` / ``tracing_c16``: non-streaming through the gateway without tracing and through one
  exporting every span (``OTEL_TRACES_SAMPLER=always_on``) to a loopback OTLP/HTTP sink, paired per
  repetition: the ratios of the c=1 median latency and of the c=16 CPU per request.
* ``overhead_c1``: non-streaming c=1 straight to the simulator and through the gateway, paired, with
  ``gateway_overhead_seconds`` read from the gateway's /metrics around the gateway's run: the mean the
  metric reports against the added latency the benchmark measures (gateway minus direct, medians).
"""

from __future__ import annotations

import statistics
import urllib.request
from typing import Any

from bench.harness import BenchRun
from monitoring.processes import PYTHON, clean_env, free_port
from monitoring.processes import ManagedProcess as Proc


def _overhead_sum_count(url: str) -> tuple[float, float]:
    """(sum, count) of gateway_overhead_seconds over every route, from a /metrics text."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_overhead_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway_overhead_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def _start_sink(bench: BenchRun) -> Proc:
    port = free_port()
    proc = bench._spawn("otlp_sink", [PYTHON, "-m", "bench.otlp_sink", "--port", str(port)], clean_env(), port)
    proc.wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def run_tracing(bench: BenchRun) -> dict[str, Any]:
    """Every measurement of the section, summarized."""
    print("tracing: non-streaming c=1 and c=16, gateway without and with tracing (all spans sampled)", flush=True)
    sink = _start_sink(bench)
    env = {"GATEWAY_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}", "OTEL_TRACES_SAMPLER": "always_on"}
    traced = bench._start_gateway("traced", bench.sim_url(bench.sim), max_concurrency=None, extra_env=env)
    bench.urls["traced"], bench.servers["traced"] = bench.proxy_url(traced), traced
    ns = bench.ns
    bench._nonstream("traced", 16, ns.warmup)
    p50: dict[str, list[float]] = {"gateway": [], "traced": []}
    cpu: dict[str, list[float]] = {"gateway": [], "traced": []}
    added: list[float] = []
    metric: list[float] = []
    for rep in range(ns.reps):
        for target in ("gateway", "traced") if rep % 2 == 0 else ("traced", "gateway"):
            record = bench.measure("tracing_c1", target, rep, lambda t=target: bench._nonstream(t, 1, ns.duration))
            p50[target].append(record["result"]["latency_ms"]["p50"])
            record = bench.measure("tracing_c16", target, rep, lambda t=target: bench._nonstream(t, 16, ns.duration))
            cpu[target].append(record["result"]["cpu"]["server_us_per_req"])
        direct = bench.measure("overhead_c1", "direct", rep, lambda: bench._nonstream("direct", 1, ns.duration))
        base = f"http://127.0.0.1:{bench.servers['gateway'].port}"
        before = _overhead_sum_count(base)
        through = bench.measure("overhead_c1", "gateway", rep, lambda: bench._nonstream("gateway", 1, ns.duration))
        after = _overhead_sum_count(base)
        added.append(through["result"]["latency_ms"]["p50"] - direct["result"]["latency_ms"]["p50"])
        metric.append((after[0] - before[0]) / max(after[1] - before[1], 1) * 1000)
    ratios_p50 = [t / g for t, g in zip(p50["traced"], p50["gateway"], strict=True)]
    ratios_cpu = [t / g for t, g in zip(cpu["traced"], cpu["gateway"], strict=True)]
    return {
        "c1_p50_ms": {target: statistics.median(values) for target, values in p50.items()},
        "c1_p50_ratio": statistics.median(ratios_p50),
        "c16_cpu_us": {target: statistics.median(values) for target, values in cpu.items()},
        "c16_cpu_ratio": statistics.median(ratios_cpu),
        "added_p50_ms": statistics.median(added),
        "overhead_metric_mean_ms": statistics.median(metric),
    }


def render(section: dict[str, Any]) -> list[str]:
    """Lines for the report."""
    p50, cpu = section["c1_p50_ms"], section["c16_cpu_us"]
    return [
        f"tracing: c=1 p50 {p50['gateway']:.3f} ms without, {p50['traced']:.3f} ms with "
        f"(x{section['c1_p50_ratio']:.2f}); "
        f"c=16 CPU {cpu['gateway']:.0f} µs/req without, {cpu['traced']:.0f} with (x{section['c16_cpu_ratio']:.2f})",
        f"overhead: gateway_overhead_seconds mean {section['overhead_metric_mean_ms']:.3f} ms per request, "
        f"benchmark's added latency (p50 gateway - direct) {section['added_p50_ms']:.3f} ms",
    ]
