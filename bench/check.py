"""``python -m bench --check``: a short CPU-per-request check to run before merging request-path changes.

It starts the simulator, the bare proxy and this checkout's gateway (and with ``--gateway-src DIR``
a second gateway from ``DIR``, the baseline), measures the CPU each server spends per request in
the scenarios of issue 22's goals (non-streamed at c=16 and c=64, streamed at c=16), targets
interleaved and the order rotated per repetition, and prints the ratios: the gateway to the bare
proxy and, with a baseline, the gateway to the baseline. Ratios are taken within a repetition, then
their median. It exits 1 when a scenario's ratio exceeds ``--max-ratio`` (against the baseline when
there is one, else against the bare proxy). It is a developer's check on one machine, not a timed
unit test: on a shared machine run it twice before believing a failure.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

SCENARIOS: Final = (("nonstream_c16", 16, False), ("nonstream_c64", 64, False), ("stream_c16", 16, True))
DEFAULT_MAX_VS_BARE: Final = 2.0  # today's gateway: about 1.45x to 1.6x on the 2-vCPU machine (docs/benchmark.md)
DEFAULT_MAX_VS_BASELINE: Final = 1.10  # a change may cost at most 10% more CPU per request than the baseline
DEFAULTS: Final = {"reps": 3, "duration": 1.0, "warmup": 0.5}


def limit(ns: argparse.Namespace) -> float:
    """The ratio that fails the check."""
    if ns.max_ratio is not None:
        return float(ns.max_ratio)
    return DEFAULT_MAX_VS_BASELINE if ns.baseline_src is not None else DEFAULT_MAX_VS_BARE


def run_check(bench: Any) -> dict[str, Any]:
    """Measure and judge; ``bench`` is a started :class:`bench.run.Bench` (gateway from this checkout)."""
    ns = bench.ns
    targets = ["bare", "gateway"]
    if ns.baseline_src is not None:
        print(f"starting the baseline gateway from {ns.baseline_src}", flush=True)
        server = bench.start_gateway_from(ns.baseline_src, "baseline")
        bench.urls["baseline"], bench.servers["baseline"] = bench.proxy_url(server), server
        targets.append("baseline")
    print("warming up", flush=True)
    for target in targets:
        bench.run_load(target, 16, ns.warmup, stream=False)
        bench.run_load(target, 4, ns.warmup, stream=True)
    cpu: dict[tuple[str, str, int], float] = {}
    for rep in range(ns.reps):
        order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
        for scenario, concurrency, stream in SCENARIOS:
            for target in order:
                record = bench.measure(
                    scenario,
                    target,
                    rep,
                    lambda t=target, c=concurrency, s=stream: bench.run_load(t, c, ns.duration, stream=s),
                )
                cpu[(scenario, target, rep)] = record["result"]["cpu"]["server_us_per_req"]
    threshold = limit(ns)
    judged = "baseline" if "baseline" in targets else "bare"
    rows = []
    for scenario, _, _ in SCENARIOS:
        row: dict[str, Any] = {"scenario": scenario}
        for target in targets:
            row[f"{target}_us"] = statistics.median(cpu[(scenario, target, rep)] for rep in range(ns.reps))
        for base in targets:
            if base != "gateway":
                row[f"ratio_vs_{base}"] = statistics.median(
                    cpu[(scenario, "gateway", rep)] / cpu[(scenario, base, rep)] for rep in range(ns.reps)
                )
        row["pass"] = row[f"ratio_vs_{judged}"] <= threshold
        rows.append(row)
    return {"rows": rows, "judged_against": judged, "max_ratio": threshold, "pass": all(r["pass"] for r in rows)}


def render(result: dict[str, Any]) -> str:
    """The check's table and verdict."""
    baseline = result["judged_against"] == "baseline"
    head = f"{'scenario':<15}{'bare µs':>9}{'gateway µs':>12}" + (f"{'baseline µs':>13}" if baseline else "")
    head += f"{'x bare':>8}" + (f"{'x baseline':>12}" if baseline else "") + "  verdict"
    lines = [head, "-" * len(head)]
    for row in result["rows"]:
        line = f"{row['scenario']:<15}{row['bare_us']:>9.0f}{row['gateway_us']:>12.0f}"
        line += f"{row['baseline_us']:>13.0f}" if baseline else ""
        line += f"{row['ratio_vs_bare']:>8.2f}" + (f"{row['ratio_vs_baseline']:>12.2f}" if baseline else "")
        lines.append(line + ("  ok" if row["pass"] else "  TOO COSTLY"))
    verdict = "PASS" if result["pass"] else "FAIL"
    lines.append(
        f"{verdict}: gateway CPU per request at most {result['max_ratio']:.2f} x {result['judged_against']} "
        "(median of per-repetition ratios; --max-ratio sets the limit)"
    )
    return "\n".join(lines)


def main_check(ns: argparse.Namespace, run_dir: Path, make_bench: Callable[[argparse.Namespace, Path], Any]) -> int:
    """Start the processes (``make_bench``: :class:`bench.run.Bench`), measure, print the table; 1 above the limit."""
    print(f"bench --check {run_dir}", flush=True)
    bench = make_bench(ns, run_dir)
    try:
        result = run_check(bench)
    finally:
        bench.close()
    text = render(result)
    (run_dir / "check.json").write_bytes(orjson.dumps({"check": result, "records": bench.records}))
    print()
    print(text)
    return 0 if result["pass"] else 1
