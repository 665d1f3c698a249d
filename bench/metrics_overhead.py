"""Micro-benchmark: what the gateway's metrics calls for one chat request cost, in microseconds.

One successful chat request makes these calls on the hot path (middlewares.observe and
upstream.UpstreamService): ``Metrics.observe_http`` (counter + histogram with a request-id
exemplar), ``upstream_requests.inc``, ``inflight.inc``, ``first_token.observe``,
``inflight.dec`` and ``upstream_duration.observe``. They are timed together and one by one
against an empty loop and a loop of six no-op calls, in the same process and run (timeit,
best of ``--repeat``). For scale, one access-log line (the gateway logs one per request at
INFO) is timed too, formatted by the gateway's text formatter into a discarded stream.

Run: ``python -m bench.metrics_overhead`` (``--json`` for machine output).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import timeit
from collections.abc import Sequence
from typing import Any, Final

from gateway.logs import RequestIdFilter, TextFormatter
from gateway.metrics import Metrics

ROUTE: Final = "/v1/chat/completions"
REQUEST_ID: Final = "0123456789abcdef0123456789abcdef"

SETUP: Final = """
from bench.metrics_overhead import ROUTE, REQUEST_ID, make_metrics, noop, make_access_log
m = make_metrics()
r = m.routes["default"]
access = make_access_log()
"""

# name -> statement (one request's worth). The baselines come first.
CASES: Final[dict[str, str]] = {
    "empty loop": "pass",
    "6 no-op calls": "noop(); noop(); noop(); noop(); noop(); noop()",
    "observe_http (counter + histogram, exemplar)": "m.observe_http(ROUTE, 'POST', 200, 0.0012, REQUEST_ID)",
    "observe_http without exemplar": "m.observe_http(ROUTE, 'POST', 200, 0.0012, None)",
    "upstream_requests.inc": "r.upstream_requests.inc()",
    "inflight.inc + inflight.dec": "r.inflight.inc(); r.inflight.dec()",
    "first_token.observe": "r.first_token.observe(0.0008)",
    "upstream_duration.observe": "r.upstream_duration.observe(0.0011)",
    "one chat request, all metrics calls": (
        "r.upstream_requests.inc(); r.inflight.inc(); r.first_token.observe(0.0008); "
        "r.inflight.dec(); r.upstream_duration.observe(0.0011); "
        "m.observe_http(ROUTE, 'POST', 200, 0.0012, REQUEST_ID)"
    ),
    "access log line at INFO (for scale)": (
        "access.info('request method=%s route=%s status=%d duration_ms=%.2f', 'POST', ROUTE, 200, 1.2)"
    ),
}
TOTAL: Final = "one chat request, all metrics calls"


def noop() -> None:
    """The baseline call."""


def make_metrics() -> Metrics:
    """A fresh gateway Metrics (own registry), with the chat route's series already created."""
    metrics = Metrics()
    metrics.observe_http(ROUTE, "POST", 200, 0.001, None)
    return metrics


def make_access_log() -> logging.Logger:
    """A logger like the gateway's access log, writing into a discarded in-memory stream."""
    logger = logging.getLogger("bench.access")
    logger.handlers.clear()
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(TextFormatter())
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def measure(*, number: int, repeat: int) -> dict[str, Any]:
    """Microseconds per request for every case, and the metrics total net of the baselines."""
    results: dict[str, float] = {}
    for name, stmt in CASES.items():
        timer = timeit.Timer(stmt, setup=SETUP)
        n = number if "log" not in name else max(1, number // 10)
        results[name] = min(timer.repeat(repeat=repeat, number=n)) / n * 1e6
    return {
        "us_per_request": results,
        "metrics_total_us": results[TOTAL],
        "metrics_net_of_empty_loop_us": results[TOTAL] - results["empty loop"],
        "number": number,
        "repeat": repeat,
    }


def format_table(data: dict[str, Any]) -> str:
    """The results as an aligned text table."""
    rows = data["us_per_request"]
    net = "=> metrics per chat request, net of the empty loop"
    width = max(len(name) for name in [*rows, net])
    lines = [f"{'metrics calls per request':<{width}}  µs/request"]
    lines += [f"{name:<{width}}  {value:10.3f}" for name, value in rows.items()]
    lines.append(f"{net:<{width}}  {data['metrics_net_of_empty_loop_us']:10.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=50_000, help="calls per timing (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="timings per case, best kept (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ns = parser.parse_args(argv)
    data = measure(number=ns.number, repeat=ns.repeat)
    print(json.dumps(data) if ns.json else format_table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
