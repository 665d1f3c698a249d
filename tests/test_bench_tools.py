"""The benchmark's in-process micro-benchmarks still run against the current code (tiny counts, no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("bench.metrics_overhead", ["--json", "--number", "20", "--repeat", "1"]),
        ("bench.route_pick", ["--number", "20"]),
        ("bench.token_count", ["--json", "--number", "2", "--repeat", "1"]),
    ],
)
def test_micro_benchmarks_run(module: str, args: list[str]) -> None:
    """Each micro-benchmark exits 0 and prints its result line (a renamed metric or API breaks it)."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    if module == "bench.metrics_overhead":
        assert json.loads(completed.stdout)["metrics_total_us"] > 0
    elif module == "bench.token_count":
        assert json.loads(completed.stdout)["count_us_per_1000_tokens"] > 0
    else:
        assert completed.stdout.startswith("route pool per request: 1 route ")


def test_cost_table_has_every_feature() -> None:
    """``python -m bench.costs`` prints a positive cost for every feature of the request path (tiny counts)."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.costs", "--json", "--number", "1000", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    rows = {row["feature"]: row for row in result["rows"]}
    for feature in (
        "request id and access log",
        "API-key check",
        "body read and validation",
        "admission (drain, breaker, working flag)",
        "concurrency slot",
        "route pick",
        "ticket and events",
        "metrics (HTTP and upstream)",
        "deadlines (first token, idle, total, client write)",
        "client-write guard",
        "SSE and JSON encoding",
        "status-page sampler's share",
    ):
        assert feature in rows
        assert rows[feature]["stream_us"] > 0, feature
    assert result["whole_request"]["gateway_us"] > 0
    assert result["whole_request"]["bare_us"] > 0
