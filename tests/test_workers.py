"""``serve --workers N`` as a real process tree: one port, summed metrics, restarts, a clean drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

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
    """A supervisor process, how to reach its port, and where its log goes."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        """Everything the supervisor and its workers wrote to stderr so far."""
        return self.log.read_text(errors="replace")

    async def exit_code(self, within: float) -> int | None:
        """The exit code if the supervisor ends within ``within`` seconds, else None (it is left running)."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=within)
        except TimeoutError:
            return None

    async def get(self, path: str) -> tuple[int, str]:
        # A fresh connection per request, so SO_REUSEPORT may hand each one to another worker.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session, session.get(self.base + path) as response:
            return response.status, await response.text()

    async def closed_by_server(self) -> None:
        """One request after which the server closes first, leaving its side of the connection in TIME_WAIT."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        await asyncio.wait_for(reader.read(), timeout=10)  # until the server's FIN
        writer.close()
        await writer.wait_closed()

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

    async def ready(self) -> None:
        """Wait until a worker answers /readyz with 200."""

        async def serving() -> bool:
            return (await self.get("/readyz"))[0] == 200

        await wait_until(serving, within=START_LIMIT, what="serve --workers 2 ready", interval=0.1)


class Launcher:
    """Starts ``serve --workers 2`` supervisors in front of the simulator and stops every one it started."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self._logs = logs
        self._started: list[Fleet] = []

    async def start(self, port: int, *, flag: bool = True, env: dict[str, str] | None = None) -> Fleet:
        """A supervisor for ``port`` with N=2 given by ``--workers`` (or GATEWAY_WORKERS if not ``flag``), plus ``env``."""
        workers = ["--workers", "2"] if flag else []
        log = self._logs / f"supervisor-{len(self._started)}.log"
        with log.open("wb") as stderr:  # the child keeps its own descriptor
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "gateway", "serve", *workers, "--port", str(port)),
                env={**self.env, **(env or {}), **({} if flag else {"GATEWAY_WORKERS": "2"})},
                stderr=stderr,
            )
        fleet = Fleet(process, port, log)
        self._started.append(fleet)
        return fleet

    async def stop_all(self) -> None:
        """SIGTERM every supervisor still running (SIGKILL would leave its workers to notice on their own)."""
        for fleet in self._started:
            if fleet.process.returncode is None:
                fleet.process.send_signal(signal.SIGTERM)
                if await fleet.exit_code(within=15) is None:
                    fleet.process.kill()
                    await fleet.process.wait()


@pytest.fixture(name="launcher")
async def launcher_fixture(sim: Simulator, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Launcher]:
    """Supervisors sharing a real Redis and a runtime directory of this test's own."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    settings = {
        "GATEWAY_UPSTREAM_URL": sim.url,
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_REDIS_PREFIX": redis_server.prefix(),
        "GATEWAY_PROBE_INTERVAL": "0.5",
        "GATEWAY_SHUTDOWN_TIMEOUT": "2",
        "GATEWAY_UVLOOP": "false",
        "XDG_RUNTIME_DIR": str(runtime),
    }
    env = clean_env(**settings)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    launcher = Launcher(env, tmp_path)
    try:
        yield launcher
    finally:
        await launcher.stop_all()


@pytest.fixture(name="fleet")
async def fleet_fixture(launcher: Launcher) -> Fleet:
    """``flowgpt-gateway serve --workers 2`` in front of the simulator, ready."""
    fleet = await launcher.start(free_port("127.0.0.1"))
    await fleet.ready()
    return fleet


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
    code = await asyncio.wait_for(fleet.process.wait(), timeout=15)
    assert code == 0, fleet.output()[-3000:]
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


REFUSAL_LIMIT = 10.0  # a refused supervisor starts no worker: it only imports the gateway


def _listener(port: int) -> socket.socket:
    """A plain listening socket on a loopback port: another program."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().split(") ", 1)[1].split()[1])


async def test_a_taken_port_ends_the_supervisor_at_once_with_exit_1(launcher: Launcher) -> None:
    """Another program listens on the port: serve --workers 2 exits 1 within seconds, logging the address."""
    port = free_port("127.0.0.1")
    with _listener(port):
        fleet = await launcher.start(port)
        assert await fleet.exit_code(within=REFUSAL_LIMIT) == 1, fleet.output()
    assert f"127.0.0.1:{port}" in fleet.output()


async def test_a_worker_that_cannot_listen_ends_the_supervisor_with_exit_1(fleet: Fleet) -> None:
    """Both workers die and another program takes the port: the replacements cannot listen, the supervisor exits 1."""
    workers = await fleet.both_workers()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    async def taken() -> socket.socket:  # before the replacements have imported the gateway
        return _listener(fleet.port)

    with await wait_until(taken, within=5, what="the port freed by the killed workers", interval=0.01):
        assert await fleet.exit_code(within=START_LIMIT) == 1, fleet.output()
    assert f"cannot listen on 127.0.0.1:{fleet.port}" in fleet.output()


@pytest.mark.parametrize("runtime_dir", ["shared", "own"])
async def test_a_second_deployment_on_a_held_port_is_refused(
    launcher: Launcher, fleet: Fleet, tmp_path: Path, runtime_dir: str
) -> None:
    """A second serve --workers 2 on a port a running one holds exits 1; only the first one's workers answer.

    ``own``: the second has a runtime directory of its own (another container on the host's network).
    """
    first = await fleet.both_workers()
    env = {"GATEWAY_REDIS_PREFIX": "another-deployment"}
    if runtime_dir == "own":
        (tmp_path / "elsewhere").mkdir()
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "elsewhere")
    second = await launcher.start(fleet.port, env=env)
    assert await second.exit_code(within=REFUSAL_LIMIT) == 1, second.output()
    (line,) = [line for line in second.output().splitlines() if "cannot listen" in line]
    assert f"address=127.0.0.1:{fleet.port}" in line
    # Shared: the first one's lock refuses it; own: the bind without SO_REUSEPORT does.
    assert ("lock file" in line) == (runtime_dir == "shared"), line
    answering = set()
    for _ in range(4):
        answering |= await fleet.pids()
    assert answering == first
    assert {_parent(pid) for pid in answering} == {fleet.process.pid}


async def test_of_two_deployments_started_together_one_is_refused(launcher: Launcher) -> None:
    """Two serve --workers 2 started at once on one port (neither listens yet): one exits 1, the other serves."""
    port = free_port("127.0.0.1")
    fleets = [
        await launcher.start(port),
        await launcher.start(port, env={"GATEWAY_REDIS_PREFIX": "another-deployment"}),
    ]

    async def one_refused() -> Fleet | None:
        return next((fleet for fleet in fleets if fleet.process.returncode is not None), None)

    refused = await wait_until(one_refused, within=START_LIMIT, what="one supervisor refused", interval=0.1)
    assert refused.process.returncode == 1, refused.output()
    (serving,) = (fleet for fleet in fleets if fleet is not refused)
    pids = await serving.both_workers()
    assert {_parent(pid) for pid in pids} == {serving.process.pid}
    assert serving.process.returncode is None


async def test_a_restart_right_after_a_clean_exit_serves_despite_time_wait(launcher: Launcher) -> None:
    """SIGTERM then start again at once on the same port: connections left in TIME_WAIT do not block it."""
    port = free_port("127.0.0.1")
    fleet = await launcher.start(port)
    await fleet.ready()
    for _ in range(5):
        await fleet.closed_by_server()
    fleet.process.send_signal(signal.SIGTERM)
    assert await fleet.exit_code(within=15) == 0
    assert _time_wait(port) > 0  # the case this test is about
    again = await launcher.start(port)
    await again.ready()
    assert again.process.returncode is None


async def test_workers_given_by_flag_or_env_are_reported_by_every_worker(launcher: Launcher) -> None:
    """serve --workers 2 (or GATEWAY_WORKERS=2): every worker says 2 in /status and in the page's /ui/data."""
    for flag in (True, False):
        fleet = await launcher.start(free_port("127.0.0.1"), flag=flag)
        await fleet.ready()
        seen = await fleet.both_workers()
        for _ in range(20):  # until both workers were asked (SO_REUSEPORT picks one per connection)
            status = json.loads((await fleet.get("/status"))[1])
            page = json.loads((await fleet.get("/ui/data"))[1])
            assert (status["settings"]["workers"], page["workers"]) == (2, 2), (flag, status["pid"], page["pid"])
            seen -= {status["pid"], page["pid"]}
            if not seen:
                break
        assert not seen, f"not every worker was asked: {seen}"
        fleet.process.send_signal(signal.SIGTERM)
        assert await fleet.exit_code(within=15) == 0


def _time_wait(port: int) -> int:
    """Connections on the local loopback ``port`` in TIME_WAIT (state 06 of /proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(row[1] == f"0100007F:{port:04X}" and row[3] == "06" for row in rows)
