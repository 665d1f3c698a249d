"""Non-streaming throughput and latency with ``wrk`` (C, one thread): little CPU taken from the servers.

The Lua script sets the POST body and headers and prints one JSON line from ``done``.
Results have the same shape as the asyncio load generator's ``requests`` job.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

MARKER: Final = "BENCH_JSON "

_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"max":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_path() -> str | None:
    """The wrk binary, if installed."""
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    """A Lua long-bracket literal (no escaping needed) for ``text``."""
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def write_script(path: Path, body: bytes, headers: Mapping[str, str]) -> Path:
    """A wrk script that POSTs ``body`` with ``headers`` and reports as JSON."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n" + _DONE, encoding="utf-8")
    return path


def run_wrk(url: str, script: Path, *, connections: int, duration: float, expect_status: int = 200) -> dict[str, Any]:
    """One closed-loop wrk run; ``errors`` counts responses whose status is not ``expect_status``."""
    binary = wrk_path()
    if binary is None:
        raise RuntimeError("wrk is not installed")
    seconds = max(1, round(duration))  # wrk takes whole seconds only
    argv = [binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    completed = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=duration + 30)
    line = next((x for x in completed.stdout.splitlines() if x.startswith(MARKER)), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout}")
    raw = json.loads(line[len(MARKER) :])
    seconds = raw["duration_us"] / 1e6
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    # wrk counts any status >= 400 as a "status error"; for the refusal scenario those are the answers.
    wrong_status = raw["status"] if expect_status < 400 else raw["requests"] - raw["status"]
    return {
        "requests": raw["requests"],
        "all_requests": raw["requests"],
        "errors": socket_errors + wrong_status,
        "error_samples": [] if not socket_errors else [f"socket errors {raw}"],
        "seconds": seconds,
        "wall_seconds": seconds,
        "rps": raw["requests"] / seconds,
        "latency_ms": {k: raw[k] / 1000 for k in ("p50", "p90", "p99", "max")},
    }
