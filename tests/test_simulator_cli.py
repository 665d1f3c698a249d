"""gateway/simulator/cli.py: the simulator's command line (``flowgpt-gateway sim``).

Flags map onto ``SimOptions`` and ``SimFaults``, bad values exit 2, and ``run``
serves as a real process until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
import pytest

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, UPSTREAM_PATH, signed_headers
from gateway.simulator import SimFaults, SimOptions
from gateway.simulator.cli import add_arguments, options_from_args, run
from tests.simulator_support import chat_body


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_builds_options_and_only_given_faults() -> None:
    """Flags map onto SimOptions and SimFaults; unset faults keep their healthy defaults."""
    flags = "--chunks 3 --seed 5 --no-check-signature --http-status 429 --html-200 --max-routes 8"
    options, faults = options_from_args(_parse(*flags.split()))
    assert options == SimOptions(chunks=3, seed=5, check_signature=False, max_routes=8)
    assert faults == SimFaults(http_status=429, html_200=True)
    assert options_from_args(_parse()) == (SimOptions(), SimFaults())


def test_cli_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    """run() refuses invalid settings with exit code 64 (like every command) and a message."""
    assert run(_parse("--garbage-ratio", "3")) == 64
    assert "garbage_ratio" in capsys.readouterr().err


async def test_cli_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    """run() prints the URL and the route pattern, serves the faults on the default route only, exits 0 on SIGTERM."""
    code = (
        "import argparse, sys\n"
        "from gateway.simulator.cli import add_arguments, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_arguments(parser)\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        "--http-status",
        "418",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
        url = line.split()[3]
        assert url.endswith(UPSTREAM_PATH)
        assert "/_sim/faults" in line
        async with session.post(url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
            assert resp.status == 418
        routes = (await asyncio.wait_for(proc.stdout.readline(), timeout=5)).decode()
        pattern = routes.split()[1]
        assert pattern == url.removesuffix(UPSTREAM_PATH) + "/r/<route>" + UPSTREAM_PATH
        assert "at most 64 routes" in routes
        route_url = pattern.replace("<route>", "backup")
        async with session.post(route_url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=5)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
