"""gateway/simulator/admin.py and stats.py: the ``/_sim`` control API and the counters it serves.

Faults read, replaced and healed over HTTP (per route with ``?route=``), bad fault
fields refused, and ``SimStats`` counted per route and globally, served and reset.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator import SimFaults, SimStats, Simulator
from tests.simulator_support import QUESTION, chat_body, get_json, post_chat


async def test_admin_faults_roundtrip(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Faults can be read, replaced (taking effect at once) and healed over HTTP."""
    faults_url = sim.base_url + "/_sim/faults"
    async with session.get(faults_url) as resp:
        assert await resp.json() == SimFaults().model_dump()
    async with session.post(faults_url, json={"http_status": 502, "retry_after": 3}) as resp:
        assert resp.status == 200
        assert (await resp.json())["http_status"] == 502
    assert sim.faults == SimFaults(http_status=502, retry_after=3)
    assert (await post_chat(session, sim))[0] == 502
    async with session.delete(faults_url) as resp:
        assert await resp.json() == SimFaults().model_dump()
    assert (await post_chat(session, sim))[0] == 200


@pytest.mark.parametrize(
    ("payload", "named"),
    [({"garbage_ratio": 2}, "garbage_ratio"), ({"http_status": "teapot"}, "http_status"), ({"stall": 1}, "stall")],
)
async def test_admin_rejects_bad_fault_field(
    sim: Simulator, session: aiohttp.ClientSession, payload: dict[str, Any], named: str
) -> None:
    """A bad fault value or unknown field gets 400 naming it and leaves the faults unchanged."""
    sim.faults = SimFaults(empty_stream=True)
    async with session.post(sim.base_url + "/_sim/faults", json=payload) as resp:
        assert resp.status == 400
        assert f"'{named}'" in (await resp.json())["message"]
    assert sim.faults == SimFaults(empty_stream=True)


async def test_admin_stats_and_reset(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """Stats are served as JSON and can be reset; healthz answers whatever the faults."""
    await post_chat(session, sim)
    async with session.get(sim.base_url + "/_sim/stats") as resp:
        stats = await resp.json()
    assert (stats["requests_total"], stats["responses_by_status"]) == (1, {"200": 1})
    assert stats["last_body"]["question"] == QUESTION
    async with session.post(sim.base_url + "/_sim/stats/reset") as resp:
        assert (await resp.json())["requests_total"] == 0
    assert sim.stats.requests_total == 0
    sim.faults = SimFaults(http_status=500)
    async with session.get(sim.base_url + "/_sim/healthz") as resp:
        assert await resp.json() == {"status": "ok", "faults_active": True}


async def test_route_stats_are_per_route_and_global_stats_count_all(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    """Each route counts only its own requests; the global stats (sim.stats, /_sim/stats) count every one."""
    sim.set_faults(SimFaults(http_status=503), route="a")
    for _ in range(2):
        await post_chat(session, sim, url=sim.route_url("a"))
    await post_chat(session, sim, url=sim.route_url("b"), body=chat_body("from b"))
    await post_chat(session, sim)
    a, b, default = sim.route_stats("a"), sim.route_stats("b"), sim.route_stats("default")
    assert (a.requests_total, a.responses_by_status, a.faulted_total, a.completed_streams) == (2, {503: 2}, 2, 0)
    assert (b.requests_total, b.responses_by_status, b.faulted_total, b.completed_streams) == (1, {200: 1}, 0, 1)
    assert (b.text_chunks_sent, default.requests_total, default.responses_by_status) == (8, 1, {200: 1})
    assert b.last_body is not None
    assert b.last_body["question"] == "from b"
    total = sim.stats
    assert (total.requests_total, total.responses_by_status, total.faulted_total) == (4, {503: 2, 200: 2}, 2)
    assert (total.completed_streams, total.text_chunks_sent) == (2, 16)
    stats_url = sim.base_url + "/_sim/stats"
    assert await get_json(session, stats_url, "a") == (200, a.to_dict() | {"responses_by_status": {"503": 2}})
    status, served = await get_json(session, stats_url)
    assert (status, served["requests_total"], served["responses_by_status"]) == (200, 4, {"503": 2, "200": 2})
    async with session.post(sim.base_url + "/_sim/stats/reset") as resp:
        assert (await resp.json())["requests_total"] == 0
    assert total.requests_total == a.requests_total == b.requests_total == default.requests_total == 0
    assert sim.route_stats("a") is a  # still the live object
    assert sim.route_faults("a") == SimFaults(http_status=503)  # reset touches counters only
    status, served = await get_json(session, stats_url, "never-used")
    assert (status, served) == (200, SimStats().to_dict())


async def test_admin_faults_per_route(sim: Simulator, session: aiohttp.ClientSession) -> None:
    """?route= reads, replaces and heals one route's faults; without it the default route's, as before."""
    faults_url = sim.base_url + "/_sim/faults"
    async with session.post(faults_url, params={"route": "a"}, json={"http_status": 502}) as resp:
        assert (resp.status, (await resp.json())["http_status"]) == (200, 502)
    assert await get_json(session, faults_url, "a") == (200, SimFaults(http_status=502).model_dump())
    assert await get_json(session, faults_url) == (200, SimFaults().model_dump())
    assert await get_json(session, faults_url, "b") == (200, SimFaults().model_dump())
    assert sim.route_faults("a") == SimFaults(http_status=502)
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 502
    assert (await post_chat(session, sim, url=sim.route_url("b")))[0] == 200
    assert (await post_chat(session, sim))[0] == 200
    async with session.post(faults_url, json={"http_status": 500}) as resp:  # no route: the default one
        assert resp.status == 200
    assert (sim.faults, sim.route_faults("a")) == (SimFaults(http_status=500), SimFaults(http_status=502))
    async with session.post(faults_url, params={"route": "a"}, json={"garbage_ratio": 2}) as resp:
        assert resp.status == 400
        assert (await resp.json())["field"] == "garbage_ratio"
    assert sim.route_faults("a") == SimFaults(http_status=502)
    async with session.delete(faults_url, params={"route": "a"}) as resp:
        assert await resp.json() == SimFaults().model_dump()
    assert (await post_chat(session, sim, url=sim.route_url("a")))[0] == 200
    assert sim.faults == SimFaults(http_status=500)
    status, listing = await get_json(session, sim.base_url + "/_sim/routes")
    assert (status, listing["max_routes"]) == (200, 64)
    assert listing["routes"]["default"] == {
        "path": "/r/default" + UPSTREAM_PATH,
        "faults": {"http_status": 500},
        "requests_total": 1,
    }
    assert set(listing["routes"]) == {"default", "a", "b"}
