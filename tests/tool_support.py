"""External tools the monitoring tests run (promtool, amtool, docker-compose), and the processes they leave.

A missing tool fails the test, never skips it: CI must provide it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import pytest

from monitoring.configs import ALERTMANAGER_CONFIG

REPO_ROOT: Final = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """Path of an external tool; fails the test (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed or not on PATH; CI must provide it", pytrace=False)
    return path


def run_tool(
    name: str, *args: str | Path, cwd: Path = REPO_ROOT, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run an external tool; with ``check``, a non-zero exit fails the test with its output."""
    argv = [require_tool(name), *(str(arg) for arg in args)]
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )
    return result


def live_child_pids() -> set[int]:
    """Processes whose parent is this one and that have not exited (zombies excluded); Linux /proc."""
    me = str(os.getpid())
    pids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        state, ppid = fields[0], fields[1]
        if ppid == me and state != "Z":
            pids.add(int(stat.parent.name))
    return pids


def amtool_receiver(labels: Mapping[str, str], config: Path = ALERTMANAGER_CONFIG) -> str:
    """The receiver(s) amtool routes an alert with ``labels`` to, comma-separated."""
    args = [f"{key}={value}" for key, value in labels.items()]
    result = run_tool("amtool", "config", "routes", "test", f"--config.file={config}", *args)
    return result.stdout.strip()
