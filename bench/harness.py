"""What a benchmark section uses of the run (``BenchRun``), and the run's blocking control call.

Sections type against the protocol, so they need not import bench.run (which imports them).
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from monitoring.processes import ManagedProcess


def post_json(url: str, body: bytes, *, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking POST for control calls (admin endpoints, probes of the setup)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class BenchRun(Protocol):
    """What a section uses of the benchmark run (bench.run.Bench), so sections need not import it."""

    ns: argparse.Namespace
    sim: ManagedProcess
    urls: dict[str, str]
    servers: dict[str, ManagedProcess]

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], port: int, cwd: Path | None = None
    ) -> ManagedProcess: ...

    @staticmethod
    def sim_url(proc: ManagedProcess) -> str: ...

    @staticmethod
    def proxy_url(proc: ManagedProcess) -> str: ...

    def _start_gateway(
        self,
        name: str,
        upstream: str,
        *,
        max_concurrency: int | None,
        upstreams: str | None = None,
        extra_env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> ManagedProcess: ...

    def _nonstream(
        self, target: str, concurrency: int, duration: float, *, expect_status: int = 200
    ) -> dict[str, Any]: ...

    def measure(self, scenario: str, target: str, rep: int, run: Any) -> dict[str, Any]: ...
