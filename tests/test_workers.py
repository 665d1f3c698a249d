"""``serve --workers N`` as a real process tree: one port, summed metrics, restarts, a clean drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.simulator import Simulator
from monitoring.processes import clean_env, free_port, wait_until
from tests.gateway_support import chat_body
from tests.metrics_support import parse_samples, value
from tests.redis_support import RedisServer

CHAT = "/v1/chat/completions"
START_LIMIT = 30.0  # two Python workers importing the gateway on a loaded 2-core machine


class Fleet:
    """The supervisor process and how to reach its port."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str) -> tuple[int, str]:
        # A fresh connection per request, so SO_REUSEPORT may hand each one to another worker.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session, session.get(self.base + path) as response:
            return response.status, await response.text()

    async def chat(self) -> int:
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(self.base + CHAT, json=chat_body("workers")) as response,
        ):
            await response.read()
            return response.status

    async def pids(self, samples: int = 6) -> set[int]:
        """The worker pids that answered ``samples`` fresh connections to /status."""
        seen = set()
        for _ in range(samples):
            status, body = await self.get("/status")
            if status == 200:
                seen.add(int(json.loads(body)["pid"]))
        return seen

    async def both_workers(self) -> set[int]:
        """Wait until two workers answer (the second may still be importing); their pids."""

        async def at_least_two() -> set[int] | None:
            pids = await self.pids()
            return pids if len(pids) >= 2 else None

        return await wait_until(at_least_two, within=START_LIMIT, what="two workers answering", interval=0.2)


@pytest.fixture(name="fleet")
async def fleet_fixture(sim: Simulator, redis_server: RedisServer) -> AsyncIterator[Fleet]:
    """``flowgpt-gateway serve --workers 2`` in front of the simulator, sharing a real Redis."""
    port = free_port("127.0.0.1")
    settings = {
        "GATEWAY_UPSTREAM_URL": sim.url,
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_REDIS_PREFIX": redis_server.prefix(),
        "GATEWAY_PROBE_INTERVAL": "0.5",
        "GATEWAY_SHUTDOWN_TIMEOUT": "2",
        "GATEWAY_UVLOOP": "false",
    }
    env = clean_env(**settings)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(port), env=env
    )
    fleet = Fleet(process, port)
    try:

        async def serving() -> bool:
            return (await fleet.get("/readyz"))[0] == 200

        await wait_until(serving, within=START_LIMIT, what="serve --workers 2 ready", interval=0.1)
        yield fleet
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # SIGKILL would leave the workers to notice on their own
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_every_scrape_counts_the_requests_of_all_workers(fleet: Fleet) -> None:
    """After M chats spread over both workers, gateway_http_requests_total is M whichever worker answers."""
    await fleet.both_workers()
    chats = 40
    assert [await fleet.chat() for _ in range(chats)] == [200] * chats
    for _ in range(6):
        status, text = await fleet.get("/metrics")
        assert status == 200
        samples = parse_samples(text)
        assert value(samples, "gateway_http_requests_total", route=CHAT, method="POST", code="200") == chats
        assert value(samples, "gateway_shared_state_up") == 1.0
        # Every state's series exists at 0 from start-up, also from multiprocess files (it was missing).
        for state, expected in (("closed", 1.0), ("open", 0.0), ("half_open", 0.0)):
            assert value(samples, "gateway_breaker_state", provider="flowgpt", route="default", state=state) == expected


async def test_a_killed_worker_is_replaced_and_sigterm_drains_all_with_exit_0(fleet: Fleet) -> None:
    """SIGKILL one worker: a new one serves within seconds, counts survive; SIGTERM ends everything with 0."""
    before = await fleet.both_workers()
    assert [await fleet.chat() for _ in range(10)] == [200] * 10
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> set[int]:
        return (await fleet.pids()) - before

    replacement = await wait_until(replaced, within=START_LIMIT, what="a replacement worker", interval=0.2)
    assert victim not in replacement, (before, replacement)
    assert [await fleet.chat() for _ in range(10)] == [200] * 10
    _, text = await fleet.get("/metrics")
    assert value(parse_samples(text), "gateway_http_requests_total", route=CHAT, method="POST", code="200") == 20

    fleet.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(fleet.process.wait(), timeout=15) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await fleet.get("/healthz")


async def test_workers_exit_when_their_supervisor_is_killed(fleet: Fleet) -> None:
    """SIGKILL the supervisor: its workers notice, drain and free the port instead of living on."""
    workers = await fleet.both_workers()
    fleet.process.kill()
    await fleet.process.wait()

    async def gone() -> bool:
        return not any(_alive(pid) for pid in workers)

    await wait_until(gone, within=15, what="orphaned workers exiting", interval=0.2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await fleet.get("/healthz")


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
