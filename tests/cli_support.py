"""Run the ``flowgpt-gateway`` command line as a real process, with only the given GATEWAY_* settings."""

from __future__ import annotations

import asyncio
import sys

from monitoring.processes import clean_env

CLI_LIMIT_SECONDS = 30.0  # a command that runs longer is hung


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``python -m gateway *args`` to its end: exit code and combined output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=CLI_LIMIT_SECONDS)
    assert process.returncode is not None
    return process.returncode, output.decode()
