"""gateway.cli: the ``flowgpt-gateway`` command line (serve, demo, probe; ``sim`` is tested with the simulator).

Flag parsing and exit codes run in this process; the commands run as real processes
(``python -m gateway``) with only the GATEWAY_* settings a test gives them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import aiohttp
import pytest

from gateway import __version__
from gateway.cli import EXIT_BAD_SETTINGS, build_parser, load_settings, main, serve
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import clean_env, free_port
from tests.gateway_support import chat_body, make_settings

BLOCKED = SimFaults(http_status=403, http_body="cloudflare")
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


@pytest.fixture(name="no_gateway_env")
def no_gateway_env_fixture(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's environment without GATEWAY_* variables (restored after the test)."""
    for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    return monkeypatch


# --- flags and settings, in this process --------------------------------------------------


def test_flags_override_the_environment(no_gateway_env: pytest.MonkeyPatch) -> None:
    """A flag wins over its GATEWAY_* variable; settings without a flag still come from the environment."""
    no_gateway_env.setenv("GATEWAY_PORT", "1234")
    no_gateway_env.setenv("GATEWAY_HOST", "127.0.0.2")
    ns = build_parser().parse_args(["serve", "--port", "9999", "--log-format", "json"])
    settings = load_settings(ns)
    assert (settings.port, settings.host, settings.log_format) == (9999, "127.0.0.2", "json")


def test_version_flag_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", ["serve", "demo", "probe"])
def test_a_bad_setting_stops_with_one_line_naming_it(
    no_gateway_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """An invalid GATEWAY_* value exits 64 from every command before anything starts (probe's 2 means no route works)."""
    no_gateway_env.setenv("GATEWAY_BREAKER_FAIL_MAX", "zero")
    assert main([command]) == EXIT_BAD_SETTINGS
    error = capsys.readouterr().err
    assert error.startswith("flowgpt-gateway: ")
    assert "GATEWAY_BREAKER_FAIL_MAX" in error


async def test_serve_exits_1_when_it_cannot_listen(capsys: pytest.CaptureFixture[str]) -> None:
    """A port already taken: serve says so on stderr and returns 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        settings = make_settings("http://127.0.0.1:9/unused", host="127.0.0.1", port=port)
        assert await serve(settings) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# --- the commands as real processes -------------------------------------------------------


async def _run_probe_command(upstream_url: str, routes: str = "") -> tuple[int, str]:
    env = {"GATEWAY_TIMEOUT_FIRST_TOKEN": "2"}
    env.update({"GATEWAY_UPSTREAMS": routes} if routes else {"GATEWAY_UPSTREAM_URL": upstream_url})
    return await run_cli("probe", env=env)


async def test_probe_command_exit_codes(sim: Simulator) -> None:
    """`flowgpt-gateway probe` probes every route: exit 0 if all work, 1 if some fail, 2 if none works."""
    code, output = await _run_probe_command(sim.url)
    assert code == 0, output
    assert output.startswith("ok route=default ")
    routes = json.dumps([{"name": name, "url": sim.route_url(name)} for name in ("a", "b", "c")])
    sim.set_faults(SimFaults(http_status=403, http_body="cloudflare"), route="b")
    code, output = await _run_probe_command(sim.url, routes)
    assert code == 1, output
    assert [line.split()[:2] for line in output.splitlines() if line.startswith(("ok", "failed"))] == [
        ["ok", "route=a"],
        ["failed", "route=b"],
        ["ok", "route=c"],
    ]
    sim.faults = SimFaults(http_status=403, http_body="cloudflare")
    code, output = await _run_probe_command(sim.url)
    assert code == 2, output
    assert "failed route=default" in output
    assert "Cloudflare" in output


async def test_probe_tells_bad_settings_from_no_route_working_and_names_routes_in_logs(sim: Simulator) -> None:
    """Bad settings exit 64 (not 2, which means no route works); a failed probe's log line names its route."""
    code, output = await run_cli("probe", env={"GATEWAY_UPSTREAMS": '[{"name": "Bad"}]'})
    assert code == 64, output
    sim.set_faults(BLOCKED, route="x")
    code, output = await run_cli(
        "probe", env={"GATEWAY_UPSTREAMS": json.dumps([{"name": "x", "url": sim.route_url("x")}])}
    )
    assert code == 2, output
    assert "health probe failed route=x" in output


async def test_the_demo_always_runs_against_its_simulator() -> None:
    """A GATEWAY_UPSTREAMS in the environment does not send the demo's traffic elsewhere; the page's URL comes first."""
    gateway_port, sim_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--port",
        str(gateway_port),
        "--sim-port",
        str(sim_port),
        env=clean_env(GATEWAY_UPSTREAMS='[{"name": "x", "url": "http://127.0.0.1:9/x"}]'),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        printed: list[str] = []
        async with asyncio.timeout(20):
            while "stop with Ctrl-C" not in (line := (await process.stdout.readline()).decode()):
                printed.append(line)
        banner = [line for line in printed if line.startswith(("status page", "simulator", "routes", "gateway "))]
        assert banner[0].split()[:3] == ["status", "page", f"http://127.0.0.1:{gateway_port}/"]  # first: the page
        async with aiohttp.ClientSession() as session:
            async with session.get(banner[0].split()[2]) as response:
                assert response.status == 200
                assert response.content_type == "text/html"
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            async with session.post(url, json=chat_body()) as response:
                assert response.status == 200
            async with session.get(f"http://127.0.0.1:{gateway_port}/readyz") as response:
                names = [route["name"] for route in (await response.json())["routes"]]
        assert names == ["primary", "backup"]
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=20)


async def test_more_than_one_worker_without_redis_is_refused_in_one_line() -> None:
    """GATEWAY_WORKERS=2 without GATEWAY_REDIS_URL: exit 64 (a bad setting) and a message naming both settings."""
    code, output = await run_cli("serve", "--workers", "2", env={})
    assert code == EXIT_BAD_SETTINGS
    assert "GATEWAY_WORKERS > 1 needs GATEWAY_REDIS_URL" in output
    assert len(output.strip().splitlines()) == 1


async def test_serve_refuses_ui_admin_without_a_token_at_start_up() -> None:
    """`serve` exits 64 (a bad setting) with the one-line reason when GATEWAY_UI=admin lacks the token."""
    code, output = await run_cli("serve", "--port", "0", env={"GATEWAY_UI": "admin"})
    assert code == EXIT_BAD_SETTINGS
    assert "GATEWAY_UI=admin needs GATEWAY_ADMIN_TOKEN" in output
    assert len(output.strip().splitlines()) == 1
