"""Medians, ratios, the issue's targets and the printed table, from a run's raw records.

A record is one measurement: ``{"scenario", "target", "rep", "result": {...}}``. Ratios are
taken within a repetition (the targets of one repetition ran back to back) and then the
median over repetitions is reported, which cancels most of a noisy machine's drift.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any, Final

from bench.fleet import render as fleet_lines
from bench.tracing import render as tracing_lines

TARGETS: Final = ("direct", "bare", "gateway")
LABELS: Final = {
    "direct": "direct",
    "bare": "bare proxy",
    "gateway": "gateway",
    "baseline": "baseline",
    "gateway1": "gateway, 1 route",
    "gateway8": "gateway, 8 routes",
    "workers1": "1 worker",
    "workers2": "2 workers",
    "redis_off": "no Redis",
    "redis_on": "Redis",
    "redis_paused": "Redis stop",
    "traced": "traced",
}
MAX_ROUTE_POOL_ADDED_MS: Final = 0.05  # 8 routes instead of 1 may add at most this to the p50 at c=1
NONSTREAM: Final = (("nonstream_c1", 1), ("nonstream_c16", 16), ("nonstream_c64", 64))
STREAM: Final = (("stream_c1", 1), ("stream_c16", 16))

# The targets.
MAX_ADDED_P50_MS: Final = 1.0
MIN_C64_RATIO_VS_BARE: Final = 0.7
MIN_REFUSALS_PER_S: Final = 5000.0
MAX_REFUSAL_P99_MS: Final = 5.0
MAX_RSS_MB: Final = 150.0

Record = dict[str, Any]


def _median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else float("nan")


def _by_rep(records: Sequence[Record], scenario: str, target: str) -> dict[int, dict[str, Any]]:
    return {r["rep"]: r["result"] for r in records if r["scenario"] == scenario and r["target"] == target}


def summarize_scenario(records: Sequence[Record], scenario: str) -> dict[str, dict[str, Any]]:
    """Per target: medians over repetitions, and per-repetition ratios' medians."""
    runs = {t: _by_rep(records, scenario, t) for t in TARGETS}
    out: dict[str, dict[str, Any]] = {}
    for target, reps in runs.items():
        if not reps:
            continue
        results = list(reps.values())
        row = summarize_single(results)
        row |= {
            "server_cpu_util": _median(r["cpu"]["server_util"] for r in results),
            "sim_cpu_us_per_req": _median(r["cpu"]["sim_us_per_req"] for r in results),
        }
        if "ttft_ms" in results[0]:
            row["ttft_p50_ms"] = _median(r["ttft_ms"]["p50"] for r in results)
            row["ttft_p99_ms"] = _median(r["ttft_ms"]["p99"] for r in results)
        for base in ("direct", "bare"):
            shared = [rep for rep in reps if rep in runs[base]]
            row[f"rps_ratio_vs_{base}"] = _median(reps[i]["rps"] / runs[base][i]["rps"] for i in shared)
            row[f"added_p50_ms_vs_{base}"] = _median(
                reps[i]["latency_ms"]["p50"] - runs[base][i]["latency_ms"]["p50"] for i in shared
            )
        out[target] = row
    return out


def summarize_single(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of a one-target scenario (the breaker's fast-fail path); every scenario's row starts with them."""
    return {
        "reps": len(results),
        "rps": _median(r["rps"] for r in results),
        "p50_ms": _median(r["latency_ms"]["p50"] for r in results),
        "p99_ms": _median(r["latency_ms"]["p99"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "server_cpu_us_per_req": _median(r["cpu"]["server_us_per_req"] for r in results),
    }


def evaluate(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target of the issue."""
    verdicts: list[dict[str, Any]] = []

    def add(name: str, ok: bool, measured: str, goal: str) -> None:
        verdicts.append({"target": name, "pass": ok, "measured": measured, "goal": goal})

    c1 = summary["scenarios"].get("nonstream_c1", {}).get("gateway")
    if c1:
        added = c1["added_p50_ms_vs_direct"]
        add(
            "added latency at c=1",
            added < MAX_ADDED_P50_MS,
            f"+{added:.3f} ms p50 over direct",
            f"< {MAX_ADDED_P50_MS:g} ms",
        )
    c64 = summary["scenarios"].get("nonstream_c64", {}).get("gateway")
    if c64:
        ratio = c64["rps_ratio_vs_bare"]
        bare_cpu = summary["scenarios"]["nonstream_c64"].get("bare", {}).get("server_cpu_us_per_req", float("nan"))
        add(
            "throughput at c=64",
            ratio >= MIN_C64_RATIO_VS_BARE,
            f"{ratio:.2f} x bare proxy (CPU per request: bare {bare_cpu:.0f} µs / gateway "
            f"{c64['server_cpu_us_per_req']:.0f} µs = {bare_cpu / c64['server_cpu_us_per_req']:.2f})",
            f">= {MIN_C64_RATIO_VS_BARE:g} x bare proxy",
        )
    breaker = summary.get("breaker_open")
    if breaker:
        ok = breaker["rps"] >= MIN_REFUSALS_PER_S and breaker["p99_ms"] < MAX_REFUSAL_P99_MS and not breaker["errors"]
        add(
            "breaker-open fast-fail",
            ok,
            f"{breaker['rps']:.0f}/s, p99 {breaker['p99_ms']:.2f} ms, {breaker['errors']} wrong answers",
            f">= {MIN_REFUSALS_PER_S:g}/s, p99 < {MAX_REFUSAL_P99_MS:g} ms",
        )
    routes = summary.get("routes")
    if routes:
        added = routes["added_p50_ms"]
        add(
            "8 routes instead of 1 at c=1",
            added <= MAX_ROUTE_POOL_ADDED_MS,
            f"{added:+.3f} ms p50 (1 route {routes['p50_ms']['gateway1']:.3f} ms, "
            f"8 routes {routes['p50_ms']['gateway8']:.3f} ms; median of paired runs)",
            f"<= +{MAX_ROUTE_POOL_ADDED_MS:g} ms",
        )
    memory = summary.get("memory", {}).get("gateway")
    if memory:
        ok = memory["rss_hwm_mb"] < MAX_RSS_MB and memory["errors"] == 0 and memory["all_open"]
        add(
            f"{memory['streams']:,} concurrent streams",
            ok,
            f"peak RSS {memory['rss_hwm_mb']:.1f} MB, {memory['errors']} errors",
            f"RSS < {MAX_RSS_MB:g} MB, no errors",
        )
    return verdicts


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN check without math


def render(summary: dict[str, Any], verdicts: Sequence[dict[str, Any]]) -> str:
    """The human-readable report."""
    meta = summary["meta"]
    lines = [
        f"flowgpt-gateway benchmark  {meta['started']}  {meta['cpus']} CPUs  load {meta['loadavg_before']}  "
        f"reps {meta['reps']}  commit {meta['commit']}  (medians over repetitions)",
        f"gateway: {meta.get('gateway_src') or 'this checkout'}, log level {meta['gateway_log_level']}, "
        f"{'uvloop' if meta['uvloop'] else 'asyncio loop'}",
        f"non-streaming load: {meta['nonstream_tool']}; streaming: asyncio load generator; "
        f"simulator: {meta['sim_chunks']} chunks, zero delay",
        "",
    ]
    head = (
        f"{'scenario':<15}{'target':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'ttft50':>8}{'ttft99':>8}{'cpu µs/req':>11}{'sim µs/req':>11}{'x direct':>9}{'x bare':>8}"
        f"{'+p50 ms':>9}{'err':>5}"
    )
    lines += [head, "-" * len(head)]
    for scenario, _ in (*NONSTREAM, *STREAM):
        rows = summary["scenarios"].get(scenario)
        if not rows:
            continue
        for i, target in enumerate(t for t in TARGETS if t in rows):
            row = rows[target]
            lines.append(
                f"{scenario if i == 0 else '':<15}{LABELS[target]:<12}{_fmt(row['rps'], 0):>9}"
                f"{_fmt(row['p50_ms'], 3):>9}{_fmt(row['p99_ms'], 3):>9}"
                f"{_fmt(row.get('ttft_p50_ms', float('nan')), 3):>8}{_fmt(row.get('ttft_p99_ms', float('nan')), 3):>8}"
                f"{_fmt(row['server_cpu_us_per_req'], 0):>11}{_fmt(row['sim_cpu_us_per_req'], 0):>11}"
                f"{_fmt(row['rps_ratio_vs_direct']):>9}{_fmt(row['rps_ratio_vs_bare']):>8}"
                f"{_fmt(row['added_p50_ms_vs_direct'], 3):>9}{row['errors']:>5}"
            )
    lines += [
        "",
        "cpu µs/req: CPU time of the server under test per request (direct: the simulator's);"
        " x direct / x bare: req/s ratio; +p50 ms: p50 over direct's.",
    ]
    breaker = summary.get("breaker_open")
    if breaker:
        lines += [
            "",
            f"breaker open (gateway, c={meta['breaker_concurrency']}): {_fmt(breaker['rps'], 0)} refusals/s, "
            f"p50 {_fmt(breaker['p50_ms'], 3)} ms, p99 {_fmt(breaker['p99_ms'], 3)} ms, "
            f"cpu {_fmt(breaker['server_cpu_us_per_req'], 0)} µs/refusal, {breaker['errors']} wrong answers",
        ]
    fleet = summary.get("fleet")
    if fleet:
        lines += ["", *fleet_lines(fleet)]
    tracing = summary.get("tracing")
    if tracing:
        lines += ["", *tracing_lines(tracing)]
    memory = summary.get("memory", {})
    for target, row in memory.items():
        lines.append(
            f"{row['streams']:,} open streams, {LABELS[target]}: RSS idle {_fmt(row['rss_idle_mb'], 1)} MB, "
            f"all open {_fmt(row['rss_open_mb'], 1)} MB, peak {_fmt(row['rss_hwm_mb'], 1)} MB; "
            f"opened in {_fmt(row['open_seconds'], 1)} s, {row['completed_ok']} completed, {row['errors']} errors"
        )
    overhead = summary.get("metrics_overhead")
    if overhead:
        rows = overhead["us_per_request"]
        lines.append(
            f"metrics calls per chat request: {_fmt(overhead['metrics_net_of_empty_loop_us'], 2)} µs "
            f"(observe_http {_fmt(rows['observe_http (counter + histogram, exemplar)'], 2)} µs; "
            f"empty loop {_fmt(rows['empty loop'], 3)} µs; one access-log line "
            f"{_fmt(rows['access log line at INFO (for scale)'], 2)} µs)"
        )
    tokens = summary.get("token_count")
    if tokens:
        per = {name: _fmt(tokens[f"cutter_{name}_us_per_fragment"], 2) for name in ("plain", "stop", "max_tokens")}
        lines.append(
            f"token counting (usage): {_fmt(tokens['count_us_per_1000_tokens'], 0)} µs per 1,000 tokens; cutter per "
            f"fragment of ~{_fmt(tokens['tokens_per_fragment'], 1)} tokens: {per['plain']} µs plain, "
            f"{per['stop']} µs with stop, {per['max_tokens']} µs with max_tokens"
        )
    profile = summary.get("profile")
    if profile:
        lines.append(f"profile: {profile['path']} ({profile['samples']} samples); top self time:")
        lines += [f"  {item['self_pct']:5.1f}%  {item['frame']}" for item in profile["top_self"][:8]]
    lines += ["", "targets:"]
    lines += [
        f"  {'PASS' if v['pass'] else 'FAIL'}  {v['target']}: {v['measured']} (goal {v['goal']})" for v in verdicts
    ]
    return "\n".join(lines)
