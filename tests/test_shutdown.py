"""Graceful shutdown of a real gateway process: drain, finish or end streams, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from gateway.simulator import SimOptions, Simulator
from monitoring.processes import clean_env, eventually, free_port
from tests.gateway_support import chat_body

pytestmark = pytest.mark.slow

GatewayProcess = tuple[asyncio.subprocess.Process, str]


@pytest.fixture(name="slow_sim")
async def slow_sim_fixture() -> AsyncIterator[Simulator]:
    """A simulator whose answers take about a second (10 chunks, 0.1 s apart)."""
    async with Simulator(SimOptions(chunks=10, chunk_delay=0.1)) as simulator:
        yield simulator


@pytest.fixture(name="start_gateway")
async def start_gateway_fixture(slow_sim: Simulator) -> AsyncIterator[Callable[[float], Awaitable[GatewayProcess]]]:
    """Start `python -m gateway serve` as a real process; kill leftovers at the end."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(shutdown_timeout: float) -> GatewayProcess:
        port = free_port()
        env = clean_env(
            GATEWAY_PORT=str(port),
            GATEWAY_UPSTREAM_URL=slow_sim.url,
            GATEWAY_PROBE_ENABLED="false",
            GATEWAY_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # up to ~10 s for the interpreter to start
                try:
                    async with session.get(base + "/healthz") as response:
                        if response.status == 200:
                            return process, base
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        raise AssertionError("gateway did not become healthy")

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _events_after_sigterm(process: asyncio.subprocess.Process, base: str) -> tuple[list[str], bool]:
    """Start a stream, SIGTERM the gateway once it started, read to the end; also try a new connection."""
    events: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            base + "/v1/chat/completions", json=chat_body("a question for the shutdown test", stream=True)
        ) as response,
    ):
        assert response.status == 200
        process.send_signal(signal.SIGTERM)
        new_refused = False
        async with aiohttp.ClientSession() as other:
            for _ in range(100):  # the signal is handled asynchronously; give it up to ~2 s
                try:
                    async with other.get(base + "/healthz") as late:
                        new_refused = late.status == 503
                except aiohttp.ClientConnectionError:
                    new_refused = True
                if new_refused:
                    break
                await asyncio.sleep(0.02)
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(line[6:].decode().strip())
    return events, new_refused


async def test_in_flight_stream_completes_within_the_grace(
    start_gateway: Callable[[float], Awaitable[GatewayProcess]],
) -> None:
    """SIGTERM during a stream: new work is refused, the stream still finishes with [DONE], exit code 0."""
    process, base = await start_gateway(10.0)
    events, new_refused = await _events_after_sigterm(process, base)
    assert events[-1] == "[DONE]"
    assert new_refused
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def test_stream_outliving_the_grace_ends_with_an_error_event(
    start_gateway: Callable[[float], Awaitable[GatewayProcess]],
) -> None:
    """When the grace runs out the stream ends with a shutting_down error event, and the exit code is still 0."""
    process, base = await start_gateway(0.3)
    events, _ = await _events_after_sigterm(process, base)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert "Traceback" not in log


async def test_idle_gateway_exits_promptly_on_sigint(
    start_gateway: Callable[[float], Awaitable[GatewayProcess]],
) -> None:
    """With nothing in flight, SIGINT stops the gateway at once with exit code 0."""
    process, _ = await start_gateway(10.0)
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), timeout=5) == 0
    await eventually(lambda: process.returncode == 0)
