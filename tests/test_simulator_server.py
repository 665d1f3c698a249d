"""gateway/simulator/server.py and state.py: the app factory and the ``Simulator``'s life on its socket.

``create_simulator_app`` under pytest-aiohttp; ``stop`` cutting a stalled stream at
once (state.py's part, which has no test file of its own), a restart on the same
port with the stats kept, and the port before the first start.
"""

from __future__ import annotations

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, UPSTREAM_PATH, signed_headers
from gateway.simulator import SimFaults, SimOptions, Simulator, create_simulator_app
from tests.simulator_support import ANSWER, chat_body, parse, post_chat, stop_cuts, text_of


async def test_app_factory_works_with_pytest_aiohttp(aiohttp_client: AiohttpClient) -> None:
    """create_simulator_app serves the protocol (on the plain and the route paths) under pytest-aiohttp's test client too."""
    client = await aiohttp_client(create_simulator_app(SimOptions(chunks=2)))
    for path in (UPSTREAM_PATH, "/r/backup" + UPSTREAM_PATH):
        resp = await client.post(path, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN))
        objects, _ = parse(await resp.read())
        assert text_of(objects) == ANSWER


async def test_stop_is_quick_with_a_stalled_stream_open(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """stop() cuts a stalled stream at once instead of waiting for it."""
    sim.faults = SimFaults(stall_after=1)
    async with session.post(sim.url, json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN)) as resp:
        for _ in range(3):  # two meta lines and the one text chunk
            await resp.content.readline()
        await stop_cuts(sim, resp)
    assert sim.stats.active_streams == 0


async def test_restart_on_the_same_port(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """After stop() requests are refused; start() listens again on the same port, stats kept."""
    port = sim.port
    assert (await post_chat(session, sim))[0] == 200
    await sim.stop()
    assert not sim.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_chat(session, sim)
    await sim.start()
    assert sim.port == port
    assert (await post_chat(session, sim))[0] == 200
    assert sim.stats.completed_streams == 2


def test_port_is_unknown_before_first_start() -> None:
    """A port-0 simulator has no port until it starts; an explicit one is known at once."""
    with pytest.raises(RuntimeError):
        _ = Simulator().port
    assert Simulator(port=8123).url == "http://127.0.0.1:8123" + UPSTREAM_PATH
