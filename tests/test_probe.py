"""The health probe, the working flag and readiness (the one-shot probe command: test_cli.py)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import __version__
from gateway.app_keys import INFLIGHT, ROUTES
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import eventually
from tests.clock_support import FakeClock
from tests.gateway_support import GatewayFactory, chat_body
from tests.metrics_support import delta, scrape, value

Client = TestClient[web.Request, web.Application]
P = {"provider": "flowgpt"}
R = {**P, "route": "default"}  # the labels of an upstream series of the default route
CHAT = "/v1/chat/completions"


def _probes_seen(sim: Simulator) -> int:
    return sim.stats.requests_total


async def test_two_failed_probes_stop_traffic_without_touching_the_upstream(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Two failed probes flip working to 0; chat requests then get 503 upstream_not_working at once."""
    gateway = await make_gateway()
    prober = gateway.app[ROUTES]["default"].prober
    sim.faults = SimFaults(http_status=503)
    before = await scrape(gateway)
    assert not (await prober.probe_once()).ok
    assert gateway.app[ROUTES]["default"].flag.working  # one failure is not enough (hysteresis)
    assert not (await prober.probe_once()).ok
    assert not gateway.app[ROUTES]["default"].flag.working
    seen = sim.stats.requests_total
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "upstream_not_working"
    assert int(response.headers["Retry-After"]) >= 1
    assert sim.stats.requests_total == seen
    after = await scrape(gateway)
    assert value(after, "gateway_provider_working", **R) == 0
    assert delta(before, after, "gateway_health_probes_total", result="failure", **R) == 2
    assert delta(before, after, "gateway_health_probe_duration_seconds_count", **R) == 2
    assert delta(before, after, "gateway_admission_rejections_total", reason="not_working", **P) == 1


async def test_recovery_restores_traffic_and_closes_the_breaker(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A successful probe flips working back on and half-opens the breaker at once; the first live call closes it."""
    gateway = await make_gateway(breaker_fail_max=1, retry_max=0)
    prober = gateway.app[ROUTES]["default"].prober
    sim.faults = SimFaults(http_status=500)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    assert gateway.app[ROUTES]["default"].breaker.state == "open"
    await prober.probe_once()
    await prober.probe_once()
    assert not gateway.app[ROUTES]["default"].flag.working
    sim.faults = SimFaults()
    result = await prober.probe_once()
    assert result.ok
    assert gateway.app[ROUTES]["default"].flag.working
    assert gateway.app[ROUTES]["default"].breaker.state == "half_open"  # the probe never closes it: a live trial does
    assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert gateway.app[ROUTES]["default"].breaker.state == "closed"
    samples = await scrape(gateway)
    assert value(samples, "gateway_provider_working", **R) == 1
    assert value(samples, "gateway_health_probe_last_success_timestamp_seconds", **R) == pytest.approx(result.at)


async def test_probes_faster_while_not_working(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """The next probe comes after the unhealthy interval while not working, the normal one otherwise."""
    gateway = await make_gateway(probe_interval=30, probe_unhealthy_interval=5)
    prober = gateway.app[ROUTES]["default"].prober
    assert 27 <= prober.next_delay() <= 33
    sim.faults = SimFaults(http_status=500)
    await prober.probe_once()
    await prober.probe_once()
    assert 4.5 <= prober.next_delay() <= 5.5


async def test_breaker_opening_triggers_an_immediate_probe(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """When live traffic opens the breaker the prober runs at once instead of at its next tick."""
    gateway = await make_gateway(probe_enabled=True, probe_interval=600, breaker_fail_max=1, retry_max=0)
    health = gateway.app[ROUTES]["default"].flag
    await eventually(lambda: health.probes_total == 1)  # the start-up probe
    sim.faults = SimFaults(http_status=500)
    assert (await gateway.post(CHAT, json=chat_body())).status == 502
    await eventually(lambda: health.probes_total == 2)
    assert health.last_probe is not None
    assert not health.last_probe.ok


async def test_loop_survives_any_exception_and_stops_cleanly(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe that raises something unexpected is recorded as a failure and the loop goes on; stop() ends it."""
    gateway = await make_gateway(probe_interval=0.01, probe_unhealthy_interval=0.01)
    prober = gateway.app[ROUTES]["default"].prober
    health = gateway.app[ROUTES]["default"].flag

    async def explode(*_: object) -> None:
        raise RuntimeError("a bug in the probe path")

    monkeypatch.setattr(gateway.app[ROUTES]["default"].client, "open", explode)
    prober.start()
    await eventually(lambda: health.probes_total >= 3)
    assert health.last_probe is not None
    assert health.last_probe.error == "unexpected RuntimeError"
    await prober.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe")]


async def test_probe_task_ends_with_the_app(make_gateway: GatewayFactory) -> None:
    """The background task starts with the app and is gone after the app stops."""
    gateway = await make_gateway(probe_enabled=True)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "health-probe-default"]
    await gateway.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("health-probe")]


async def test_readiness_and_liveness_bodies(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """/readyz is 200 until probes fail, then 503 with the probe details; /healthz stays 200 until draining."""
    gateway = await make_gateway()
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200
    route = body["routes"][0]
    assert (body["working"], route["name"], route["last_probe"], route["breaker"]["state"]) == (
        True,
        "default",
        None,
        "closed",
    )
    sim.faults = SimFaults(http_status=502)
    for _ in range(2):
        await gateway.app[ROUTES]["default"].prober.probe_once()
    not_ready = await gateway.get("/readyz")
    body = await not_ready.json()
    assert not_ready.status == 503
    route = body["routes"][0]
    assert body["working"] is False
    assert route["working"] is False
    assert route["consecutive_failures"] == 2
    assert route["last_probe"]["ok"] is False
    assert "HTTP 502" in route["last_probe"]["error"]
    assert route["last_probe"]["latency_seconds"] >= 0
    assert (await gateway.get("/healthz")).status == 200
    gateway.app[INFLIGHT].begin_shutdown()
    assert (await gateway.get("/healthz")).status == 503
    assert (await (await gateway.get("/readyz")).json())["shutting_down"] is True


async def test_operator_can_pin_the_working_flag(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """An operator marks the upstream not working for maintenance, or working despite probes, and hands it back."""
    gateway = await make_gateway(admin_token="t")
    auth = {"Authorization": "Bearer t"}
    await gateway.post("/admin/working", json={"mode": "not_working"}, headers=auth)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 503
    assert "operator" in (await response.json())["error"]["message"]
    assert (await gateway.get("/readyz")).status == 503
    sim.faults = SimFaults(http_status=500)
    for _ in range(2):
        await gateway.app[ROUTES]["default"].prober.probe_once()
    await gateway.post("/admin/working", json={"mode": "working"}, headers=auth)
    assert (await gateway.get("/readyz")).status == 200
    response = await gateway.post("/admin/working", json={"mode": "auto"}, headers=auth)
    assert (await response.json())["routes"][0]["working"] is False  # the probes' verdict again
    assert (await gateway.post("/admin/working", json={"mode": "auto"})).status == 401
    assert (
        await gateway.post("/admin/working", json={"mode": "auto"}, headers={"Authorization": "Bearer x"})
    ).status == 403


async def test_retry_after_points_at_the_next_probe(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """While not working, Retry-After is the time until the next scheduled probe (injected clock)."""
    clock = FakeClock()
    gateway = await make_gateway(clock=clock)
    health = gateway.app[ROUTES]["default"].flag
    sim.faults = SimFaults(http_status=500)
    for _ in range(2):
        await gateway.app[ROUTES]["default"].prober.probe_once()
    health.probe_scheduled(clock() + 4.2)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.headers["Retry-After"] == "5"


async def test_status_summarises_without_secrets(make_gateway: GatewayFactory) -> None:
    """/status shows version, uptime, readiness, counters and settings with secrets masked."""
    gateway = await make_gateway(upstream_token="upstream-secret", admin_token="admin-secret", api_keys="key-secret")
    await gateway.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer key-secret"})
    response = await gateway.get("/status")
    text = await response.text()
    body = await response.json()
    assert body["version"] == __version__
    assert body["uptime_seconds"] >= 0
    assert body["counters"]["routes"]["default"]["upstream_requests"] == 1
    assert body["settings"]["breaker_fail_max"] == 5
    for secret in ("upstream-secret", "admin-secret", "key-secret"):
        assert secret not in text


async def test_trigger_during_a_probe_is_not_lost(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A breaker-open trigger that arrives while a probe runs starts another probe right after it."""
    sim.faults = SimFaults(slow_first_token=0.3)
    gateway = await make_gateway(probe_enabled=True, probe_interval=600)
    await eventually(lambda: sim.stats.active_streams == 1)  # the start-up probe is in flight
    gateway.app[ROUTES]["default"].prober.trigger()
    await eventually(lambda: gateway.app[ROUTES]["default"].flag.probes_total == 2, within=3.0)


async def test_a_probe_error_quoting_secrets_is_scrubbed_where_it_is_recorded(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """An upstream echoing tokens, URL credentials, the Redis password (plain, %-encoded, base64): /readyz shows ***."""
    routes = [
        {"name": "a", "url": sim.route_url("a") + "?key=query-secret-Q1"},
        {"name": "b", "url": sim.route_url("b"), "proxy": "http://proxy-user:proxy%20pass%2FP1@127.0.0.1:9"},
        {"name": "c", "url": sim.route_url("c"), "token": "route-token-T1"},
    ]
    redis_url = "redis://:redis-pass-R1@127.0.0.1:1/0"
    echoed = " ".join(
        [
            "route-token-T1",
            "query-secret-Q1",
            "redis-pass-R1",
            "proxy%20pass%2FP1",
            base64.b64encode(b"proxy pass/P1").decode(),
            "probe-prompt-S1",
        ]
    )
    sim.set_faults(SimFaults(http_status=500, http_body=f"bad request: {echoed}"), route="a")
    gateway = await make_gateway(
        upstreams=json.dumps(routes), redis_url=redis_url, redis_timeout=0.05, probe_prompt="probe-prompt-S1"
    )
    route = gateway.app[ROUTES]["a"]
    await route.prober.probe_once()
    assert route.flag.last_probe is not None
    error = route.flag.last_probe.error or ""
    assert "bad request" in error
    status = await (await gateway.get("/status")).json()
    shown = [
        error,
        await (await gateway.get("/readyz")).text(),  # the whole answer
        *(str(route["last_probe"]) for route in status["readiness"]["routes"]),  # /status also lists settings
    ]
    for text in shown:
        for secret in ("route-token-T1", "query-secret-Q1", "redis-pass-R1", "proxy%20pass", "probe-prompt-S1"):
            assert secret not in text
        assert base64.b64encode(b"proxy pass/P1").decode() not in text
