"""gateway/simulator/routes.py: named routes, each with its own faults, stats and seeded draws.

Routes answer with their own faults at the same time; the plain path is the route
``default``; names are checked and their number bounded; a route keeps the request
contract and survives a restart.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, UPSTREAM_PATH, signed_headers
from gateway.simulator import RouteLimitError, RouteNameError, SimFaults, SimOptions, Simulator
from monitoring.processes import eventually
from tests.simulator_support import ANSWER, _bad_signature, chat_body, get_json, parse, post_chat, text_of


async def test_routes_answer_with_their_own_faults_at_the_same_time(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """While one route's stream hangs, another answers 503 and a third and the default stream healthy answers."""
    sim.set_faults(SimFaults(stall_after=1), route="stuck")
    sim.set_faults(SimFaults(http_status=503), route="down")
    timeout = aiohttp.ClientTimeout(total=None, sock_read=5)
    async with session.post(
        sim.route_url("stuck"), json=chat_body(), headers=signed_headers(ANONYMOUS_TOKEN), timeout=timeout
    ) as stuck:
        for _ in range(3):  # two meta lines and the one text chunk
            await stuck.content.readline()
        await eventually(lambda: sim.route_stats("stuck").active_streams == 1)
        down, up, default = await asyncio.gather(
            post_chat(session, sim, url=sim.route_url("down")),
            post_chat(session, sim, url=sim.route_url("up")),
            post_chat(session, sim),
        )
        assert down[0] == 503
        assert json.loads(down[2]) == {"error": {"message": "simulated upstream error 503"}}
        for status, _, raw in (up, default):
            assert (status, text_of(parse(raw)[0])) == (200, ANSWER)
        assert sim.stats.active_streams == 1
    await eventually(lambda: sim.route_stats("stuck").client_disconnects == 1)
    assert (sim.faults, sim.route_faults("up")) == (SimFaults(), SimFaults())


async def test_default_route_is_the_plain_path(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """sim.url, route_url('default'), sim.faults, set_faults(route=None) and ?route=default are one route."""
    assert sim.url == sim.base_url + UPSTREAM_PATH
    assert sim.route_url("default") == sim.base_url + "/r/default" + UPSTREAM_PATH
    assert sim.route_url("eu-1") == sim.base_url + "/r/eu-1" + UPSTREAM_PATH
    sim.set_faults(SimFaults(http_status=503))
    assert sim.faults == sim.route_faults("default") == SimFaults(http_status=503)
    assert (await post_chat(session, sim))[0] == 503
    assert (await post_chat(session, sim, url=sim.route_url("default")))[0] == 503
    assert (await post_chat(session, sim, url=sim.route_url("other")))[0] == 200
    faults_url = sim.base_url + "/_sim/faults"
    assert await get_json(session, faults_url) == await get_json(session, faults_url, "default")
    assert sim.route_stats("default").responses_by_status == {503: 2}
    assert sim.stats.responses_by_status == {503: 2, 200: 1}


async def test_count_heals_each_route_on_its_own(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """count is kept per route: a route heals after its own faulted requests, leaving the others' faults set."""
    sim.faults = SimFaults(http_status=502, count=1)
    sim.set_faults(SimFaults(http_status=503, count=2), route="a")
    sim.set_faults(SimFaults(http_status=500, count=1), route="b")
    url_a, url_b = sim.route_url("a"), sim.route_url("b")
    statuses = [(await post_chat(session, sim, url=url))[0] for url in (url_b, url_a, url_b, url_a, url_a)]
    assert statuses == [500, 503, 200, 503, 200]
    assert sim.route_faults("a") == sim.route_faults("b") == SimFaults()
    assert sim.faults == SimFaults(http_status=502, count=1)
    assert [(await post_chat(session, sim))[0] for _ in range(2)] == [502, 200]
    faulted = [sim.route_stats(name).faulted_total for name in ("a", "b", "default")]
    assert (faulted, sim.stats.faulted_total) == ([2, 1, 1], 4)


async def test_route_count_is_bounded(session: aiohttp.ClientSession) -> None:
    """Past max_routes (default included) a new route gets a JSON 404 over HTTP and RouteLimitError in Python."""
    async with Simulator(SimOptions(max_routes=3)) as sim:
        assert (await post_chat(session, sim, url=sim.route_url("r1")))[0] == 200
        sim.set_faults(SimFaults(http_status=503), route="r2")
        status, content_type, raw = await post_chat(session, sim, url=sim.route_url("r3"))
        assert (status, content_type.split(";")[0]) == (404, "application/json")
        assert json.loads(raw) == {"message": "unknown route 'r3': the simulator serves at most 3 routes"}
        async with session.post(sim.base_url + "/_sim/faults", params={"route": "r3"}, json={}) as resp:
            assert resp.status == 404
            assert "at most 3 routes" in (await resp.json())["message"]
        assert (await get_json(session, sim.base_url + "/_sim/stats", "r4"))[0] == 404
        with pytest.raises(RouteLimitError):
            sim.set_faults(SimFaults(), route="r5")
        with pytest.raises(RouteLimitError):
            sim.route_stats("r6")
        # The routes already in use keep working; the refused requests count globally only.
        assert (await post_chat(session, sim, url=sim.route_url("r1")))[0] == 200
        assert (await post_chat(session, sim, url=sim.route_url("r2")))[0] == 503
        assert (await post_chat(session, sim))[0] == 200
        assert sim.stats.responses_by_status == {200: 3, 404: 1, 503: 1}
        assert len(sim.state.routes) == 3


async def test_default_bound_is_64_routes(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """The default simulator serves 63 named routes besides the default one, and refuses the 64th name."""
    statuses = [(await post_chat(session, sim, url=sim.route_url(f"r{index}")))[0] for index in range(64)]
    assert statuses == [200] * 63 + [404]
    assert (await post_chat(session, sim, url=sim.route_url("r0")))[0] == 200


@pytest.mark.parametrize("name", ["Upper", "x" * 33, "dot.dot", "a b", "ümlaut", ""])
async def test_invalid_route_name_is_400(sim: Simulator, session: aiohttp.ClientSession, name: str) -> None:
    """A name outside [a-z0-9_-]{1,32} gets a JSON 400 naming the field, from the chat path and the admin API alike."""
    admin = [
        session.get(sim.base_url + "/_sim/faults", params={"route": name}),
        session.post(sim.base_url + "/_sim/faults", params={"route": name}, json={"http_status": 500}),
        session.delete(sim.base_url + "/_sim/faults", params={"route": name}),
        session.get(sim.base_url + "/_sim/stats", params={"route": name}),
    ]
    if name:  # an empty name is not a path the chat endpoint matches at all
        headers = signed_headers(ANONYMOUS_TOKEN)
        admin.append(session.post(f"{sim.base_url}/r/{name}{UPSTREAM_PATH}", json=chat_body(), headers=headers))
    for pending in admin:
        async with pending as resp:
            assert resp.status == 400
            error = await resp.json()
        assert error["field"] == "route"
        assert error["message"].startswith("invalid route name")
    with pytest.raises(RouteNameError):
        sim.route_url(name)
    with pytest.raises(RouteNameError):
        sim.set_faults(SimFaults(), route=name)
    assert len(sim.state.routes) == 1
    assert sim.faults == SimFaults()


async def test_route_keeps_the_request_contract(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """A route checks signatures and bodies like the default path, and counts the rejections as its own."""
    url = sim.route_url("a")
    assert (await post_chat(session, sim, url=url, headers=_bad_signature()))[0] == 401
    assert (await post_chat(session, sim, url=url, body=chat_body() | {"temperature": "0.7"}))[0] == 400
    assert sim.route_stats("a").responses_by_status == {401: 1, 400: 1}
    assert sim.route_stats("default").requests_total == 0


async def _route_statuses(session: aiohttp.ClientSession, *, interleave: bool) -> list[int]:
    faults = SimFaults(http_status=500, ratio=0.5)
    async with Simulator(SimOptions(seed=7, chunks=1)) as sim:
        sim.set_faults(faults, route="a")
        sim.set_faults(faults, route="b")
        statuses = []
        for _ in range(30):
            if interleave:
                await post_chat(session, sim, url=sim.route_url("b"))
            statuses.append((await post_chat(session, sim, url=sim.route_url("a")))[0])
        return statuses


async def test_seeded_route_draws_ignore_other_routes_traffic(session: aiohttp.ClientSession) -> None:
    """Each route draws ratio from its own seeded RNG: the same requests fault whatever other routes get."""
    alone = await _route_statuses(session, interleave=False)
    assert set(alone) == {200, 500}
    assert await _route_statuses(session, interleave=True) == alone


async def test_routes_survive_a_restart(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Route faults and stats are kept across stop() and start(), like the default route's."""
    sim.set_faults(SimFaults(http_status=503), route="a")
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 503
    await sim.stop()
    await sim.start()
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 503
    assert sim.route_stats("a").responses_by_status == {503: 2}
