"""Routes through one simulator serving three of them: failover, picking, all-down refusals, metrics."""

from __future__ import annotations

import asyncio
import collections
import json
import re
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.app_keys import ROUTES
from gateway.errors import AdmissionError, CircuitOpenError, UpstreamNotWorkingError, retry_after_seconds
from gateway.route_config import parse_routes
from gateway.route_pool import Route, RoutePool
from gateway.settings import Settings, describe_validation_error
from gateway.simulator import SimFaults, Simulator
from monitoring.processes import eventually
from tests.clock_support import FakeClock
from tests.gateway_support import GatewayFactory, chat_body
from tests.metrics_support import delta, scrape

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"
NAMES = ("a", "b", "c")
BLOCKED = SimFaults(http_status=403, http_body="cloudflare")


def routes_json(sim: Simulator, weights: dict[str, float] | None = None) -> str:
    """GATEWAY_UPSTREAMS for routes a, b and c of the simulator."""
    weights = weights or {}
    return json.dumps([{"name": n, "url": sim.route_url(n), "weight": weights.get(n, 1)} for n in NAMES])


async def routed_gateway(make_gateway: GatewayFactory, sim: Simulator, **overrides: Any) -> Client:
    """A gateway with three routes a, b, c through the simulator."""
    weights = overrides.pop("weights", None)
    return await make_gateway(upstreams=routes_json(sim, weights), **overrides)


def requests_to(sim: Simulator, name: str) -> int:
    return sim.route_stats(name).requests_total


async def test_one_blocked_route_costs_callers_nothing(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Route b blocked: every request succeeds through a or c; after b's breaker opens b gets nothing."""
    gateway = await routed_gateway(make_gateway, sim, breaker_fail_max=2, retry_max=2, retry_budget_min=100)
    sim.set_faults(BLOCKED, route="b")
    statuses = [(await gateway.post(CHAT, json=chat_body())).status for _ in range(30)]
    assert statuses == [200] * 30
    assert gateway.app[ROUTES]["b"].breaker.state == "open"
    sent_to_b = requests_to(sim, "b")
    assert sent_to_b == 2  # exactly fail_max attempts found out
    for _ in range(20):
        assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert requests_to(sim, "b") == sent_to_b


async def test_a_route_the_probe_marks_down_gets_no_traffic_and_recovers(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Route b's flag off: no request goes to b; healed and probed again, b gets traffic again."""
    gateway = await routed_gateway(make_gateway, sim, probe_unhealthy_threshold=1, probe_healthy_threshold=1)
    b = gateway.app[ROUTES]["b"]
    sim.set_faults(BLOCKED, route="b")
    assert not (await b.prober.probe_once()).ok
    assert not b.flag.working
    before = requests_to(sim, "b")
    for _ in range(30):
        assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert requests_to(sim, "b") == before
    sim.set_faults(SimFaults(), route="b")
    assert (await b.prober.probe_once()).ok
    for _ in range(30):
        assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert requests_to(sim, "b") > before + 1  # weighted 1 of 3: about 10 of 30


async def test_all_routes_down_gives_the_best_reason_and_the_earliest_retry_after(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Every breaker open: 503 circuit_open with the earliest Retry-After; every flag off: upstream_not_working."""
    clock = FakeClock()
    gateway = await routed_gateway(
        make_gateway, sim, breaker_fail_max=1, retry_max=0, breaker_reset_seconds=30, clock=clock
    )
    routes = gateway.app[ROUTES]
    for index, name in enumerate(("b", "a", "c")):  # b opens first, so it is the first to admit a trial again
        clock.advance(10 if index else 0)
        sim.set_faults(SimFaults(http_status=503), route=name)
        for other in NAMES:
            routes[other].flag.set_mode("working" if other == name else "not_working")
        assert (await gateway.post(CHAT, json=chat_body())).status == 502
    for name in NAMES:
        routes[name].flag.set_mode("auto")
    assert [routes[n].breaker.retry_after() for n in NAMES] == [20.0, 10.0, 30.0]
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "circuit_open"
    assert response.headers["Retry-After"] == "10"
    for name in NAMES:
        routes[name].flag.set_mode("not_working")
    response = await gateway.post(CHAT, json=chat_body())
    assert (response.status, (await response.json())["error"]["code"]) == (503, "upstream_not_working")
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 503
    assert [route["name"] for route in body["routes"]] == list(NAMES)


async def test_readiness_holds_while_one_route_works(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """/readyz is 200 while at least one route works, and lists every route."""
    gateway = await routed_gateway(make_gateway, sim)
    routes = gateway.app[ROUTES]
    routes["a"].flag.set_mode("not_working")
    routes["b"].flag.set_mode("not_working")
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert ready.status == 200
    assert {route["name"]: route["working"] for route in body["routes"]} == {"a": False, "b": False, "c": True}


async def test_a_half_open_route_gets_exactly_one_trial_under_load(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """20 concurrent requests while route a is half-open: one reaches a (its trial), the rest go elsewhere."""
    gateway = await routed_gateway(make_gateway, sim, breaker_fail_max=1, retry_max=0, breaker_reset_seconds=0.2)
    a = gateway.app[ROUTES]["a"]
    sim.set_faults(SimFaults(http_status=503), route="a")
    for _ in range(100):  # bounded: each request picks a with probability about 1/3
        if a.breaker.snapshot()["state"] != "closed":
            break
        await gateway.post(CHAT, json=chat_body())
    await eventually(lambda: a.breaker.state == "half_open", within=2.0)
    sim.set_faults(SimFaults(slow_first_token=0.3), route="a")
    before = requests_to(sim, "a")
    responses = await asyncio.gather(*(gateway.post(CHAT, json=chat_body()) for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert requests_to(sim, "a") - before == 1
    assert a.breaker.state == "closed"


async def test_weights_are_respected(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Weights 1:2:3 over 1,000 sequential requests give shares within 5 points of 1/6, 2/6, 3/6."""
    gateway = await routed_gateway(make_gateway, sim, weights={"a": 1, "b": 2, "c": 3})
    before = await scrape(gateway)
    for _ in range(1000):
        assert (await gateway.post(CHAT, json=chat_body())).status == 200
    after = await scrape(gateway)
    shares = {n: delta(before, after, "gateway_route_selected_total", route=n) / 1000 for n in NAMES}
    assert shares == pytest.approx({"a": 1 / 6, "b": 2 / 6, "c": 3 / 6}, abs=0.05)
    assert sum(requests_to(sim, n) for n in NAMES) == 1000


async def test_failover_is_counted_exactly(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A failed attempt on a route moves the request to another: one failover, one error, one success."""
    # a and b (failing) are nearly always drawn before c, so the request really fails over twice.
    gateway = await routed_gateway(
        make_gateway, sim, retry_max=2, retry_budget_min=10, weights={"a": 1000, "b": 1000, "c": 0.001}
    )
    sim.set_faults(SimFaults(http_status=503), route="a")
    sim.set_faults(SimFaults(http_status=503), route="b")
    before = await scrape(gateway)
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 200
    after = await scrape(gateway)
    attempts_a = requests_to(sim, "a")
    attempts_b = requests_to(sim, "b")
    assert (attempts_a, attempts_b, requests_to(sim, "c")) == (1, 1, 1)
    for name, attempts in (("a", attempts_a), ("b", attempts_b)):
        labels = {"provider": "flowgpt", "route": name}
        assert delta(before, after, "gateway_failovers_total", from_route=name) == attempts
        assert delta(before, after, "gateway_upstream_errors_total", kind="http_status", **labels) == attempts
        assert delta(before, after, "gateway_upstream_retries_total", **labels) == 0
    assert delta(before, after, "gateway_route_selected_total", route="c") == 1
    assert delta(before, after, "gateway_upstream_errors_total", kind="http_status", provider="flowgpt", route="c") == 0


async def test_rejections_never_fail_over(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A request the upstream rejects is rejected once: another route would reject it too."""
    gateway = await routed_gateway(make_gateway, sim, retry_max=2)
    for name in NAMES:
        sim.set_faults(SimFaults(reject_marker="POISON", reject_status=413), route=name)
    response = await gateway.post(CHAT, json=chat_body("POISON"))
    assert response.status == 413
    assert sum(requests_to(sim, n) for n in NAMES) == 1


async def test_a_stream_broken_mid_way_is_not_replayed(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """After the first token nothing moves to another route: the stream ends with an error event."""
    gateway = await routed_gateway(make_gateway, sim, retry_max=2)
    for name in NAMES:
        sim.set_faults(SimFaults(reset_after=2), route=name)
    response = await gateway.post(CHAT, json=chat_body(stream=True))
    text = await response.text()
    assert response.status == 200
    assert "upstream_interrupted" in text
    assert sum(requests_to(sim, n) for n in NAMES) == 1


async def test_admin_overrides_one_route_or_all(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """{"mode": "open", "route": "b"} forces b only; without a route it means every route; unknown routes are 400."""
    gateway = await routed_gateway(make_gateway, sim, admin_token="t")
    auth = {"Authorization": "Bearer t"}
    routes = gateway.app[ROUTES]
    response = await gateway.post("/admin/breaker", json={"mode": "open", "route": "b"}, headers=auth)
    assert response.status == 200
    assert [routes[n].breaker.mode for n in NAMES] == ["auto", "forced_open", "auto"]
    before = requests_to(sim, "b")
    for _ in range(15):
        assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert requests_to(sim, "b") == before
    await gateway.post("/admin/working", json={"mode": "not_working"}, headers=auth)
    assert [routes[n].flag.working for n in NAMES] == [False] * 3
    for unknown in ("zz", None, 3):  # null is not "every route": that is what leaving it out means
        response = await gateway.post("/admin/breaker", json={"mode": "auto", "route": unknown}, headers=auth)
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "route"
    assert routes["b"].breaker.mode == "forced_open"


async def test_status_lists_routes_with_masked_secrets(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """/status shows each route's state and configuration, never its token or proxy credentials."""
    upstreams = json.dumps(
        [
            {"name": "a", "url": sim.route_url("a"), "token": "token-secret-a"},
            {"name": "b", "url": sim.route_url("b"), "proxy": "http://user:proxy-secret@127.0.0.1:9"},
        ]
    )
    gateway = await make_gateway(upstreams=upstreams)
    response = await gateway.get("/status")
    text = await response.text()
    assert "token-secret-a" not in text
    assert "proxy-secret" not in text
    routes = (await response.json())["readiness"]["routes"]
    assert [(r["name"], r["config"]["proxy"]) for r in routes] == [("a", None), ("b", "http://***:***@127.0.0.1:9")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('[{"name": "Bad Name"}]', "route #1: name: String should match pattern"),
        ('[{"name": "a"}, {"name": "a"}]', "route 'a': names must be unique"),
        ('[{"name": "a", "url": "ftp://x"}]', "route 'a': url: must be an http:// or https:// URL"),
        ('[{"name": "a", "proxy": "user:secret@host:1"}]', "route 'a': proxy: must be an http:// or https:// URL"),
        ('[{"url": "http://x"}]', "route #1: name: Field required"),
        ('[{"name": "a", "weight": 0}]', "route 'a': weight: Input should be greater than 0"),
        ("not json", "its value is not valid JSON (expecting value at line 1, column 1, character 0)"),
        ('{"name": "a"}', "must be a JSON list of routes"),
    ],
)
def test_a_bad_route_list_stops_start_up_naming_the_variable_and_route(value: str, message: str) -> None:
    """GATEWAY_UPSTREAMS errors are one line naming the variable and the route, never a secret."""
    with pytest.raises(ValidationError) as info:
        Settings(upstreams=value)
    line = describe_validation_error(info.value)
    assert line.startswith("invalid setting GATEWAY_UPSTREAMS: ")
    assert message in line
    assert "secret" not in line
    assert "\n" not in line


def test_without_upstreams_one_default_route_keeps_todays_settings() -> None:
    """Unset GATEWAY_UPSTREAMS: one route "default" from GATEWAY_UPSTREAM_URL/_TOKEN/_PROXY."""
    settings = Settings(upstream_url="http://127.0.0.1:1/x", upstream_token="t", upstream_proxy="http://p:1")
    (route,) = settings.routes()
    assert (route.name, route.url, route.token.get_secret_value(), route.proxy_url) == (
        "default",
        "http://127.0.0.1:1/x",
        "t",
        "http://p:1",
    )
    assert parse_routes("") == ()


async def test_picking_prefers_fewer_calls_in_flight(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Power of two choices: with equal weights, a route with calls in flight is chosen less."""
    gateway = await routed_gateway(make_gateway, sim)
    routes = gateway.app[ROUTES]
    routes["a"].inflight = 5
    picks = collections.Counter(route.name for route in (routes.pick() for _ in range(3000)) if route is not None)
    routes["a"].inflight = 0
    # a wins only when both draws are a: 1/9 of picks.
    assert picks["a"] / 3000 == pytest.approx(1 / 9, abs=0.04)


# -- found by the review of the first landing of routes ------------------------------------------


async def test_after_every_route_failed_a_retry_goes_to_any_route_that_admits(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """b fails and trips while a failed once: the retry goes back to a (retryable failure seen), not a 502."""
    upstreams = json.dumps(
        [
            {"name": "a", "url": sim.route_url("a"), "weight": 1000},
            {"name": "b", "url": sim.route_url("b"), "weight": 0.001},
        ]
    )
    gateway = await make_gateway(upstreams=upstreams, breaker_fail_max=2, retry_max=2, retry_budget_min=100)
    sim.set_faults(SimFaults(http_status=503), route="b")
    for _ in range(2):
        sim.set_faults(SimFaults(http_status=503, count=1), route="a")
        assert (await gateway.post(CHAT, json=chat_body())).status == 200
    assert gateway.app[ROUTES]["b"].breaker.snapshot()["state"] == "open"
    sim.set_faults(SimFaults(http_status=503, count=1), route="a")
    sim.set_faults(BLOCKED, route="b")
    gateway.app[ROUTES]["b"].breaker.automatic()
    assert (await gateway.post(CHAT, json=chat_body())).status == 200  # a 503 then b blocked: a again


async def test_a_timeout_cut_short_by_the_deadline_does_not_count_against_the_next_route(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """a hangs; b, failed over to with less than its first-token limit left, times out: b is not blamed."""
    upstreams = json.dumps(
        [
            {"name": "a", "url": sim.route_url("a"), "weight": 1000},
            {"name": "b", "url": sim.route_url("b"), "weight": 0.001},
        ]
    )
    gateway = await make_gateway(
        upstreams=upstreams, timeout_first_token=2.0, timeout_total=3.2, breaker_fail_max=2, retry_max=2
    )
    sim.set_faults(SimFaults(slow_first_token=5), route="a")
    sim.set_faults(SimFaults(slow_first_token=1.5), route="b")
    responses = await asyncio.gather(*(gateway.post(CHAT, json=chat_body()) for _ in range(2)))
    assert [r.status for r in responses] == [504, 504]
    assert requests_to(sim, "b") == 2
    b = gateway.app[ROUTES]["b"].breaker
    assert (b.snapshot()["state"], b.consecutive_failures) == ("closed", 0)


async def test_all_down_retry_after_is_the_earliest_whatever_the_reason(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """a not working (probe again in about 1 s), b forced open for 30 s: circuit_open with Retry-After 1, said alike in the message."""
    gateway = await routed_gateway(make_gateway, sim, probe_unhealthy_threshold=1)
    routes = gateway.app[ROUTES]
    sim.set_faults(BLOCKED, route="a")
    await routes["a"].prober.probe_once()
    routes["b"].breaker.force_open()
    routes["c"].breaker.force_open()
    response = await gateway.post(CHAT, json=chat_body())
    error = (await response.json())["error"]
    assert (response.status, error["code"]) == (503, "circuit_open")
    assert response.headers["Retry-After"] == "1"
    assert error["message"].endswith("; retry in 1 s")


async def test_open_breakers_message_and_header_agree(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """a not working (about 1 s), b and c tripped open for 30 s: the message says the header's seconds, not b's 30."""
    gateway = await routed_gateway(make_gateway, sim, probe_unhealthy_threshold=1, breaker_fail_max=1, retry_max=2)
    routes = gateway.app[ROUTES]
    for name in NAMES:
        sim.set_faults(BLOCKED, route=name)
    await routes["a"].prober.probe_once()
    await gateway.post(CHAT, json=chat_body())  # fails on b and c, which open
    assert (routes["b"].breaker.state, routes["c"].breaker.state) == ("open", "open")
    response = await gateway.post(CHAT, json=chat_body())
    error = (await response.json())["error"]
    assert (response.status, error["code"], response.headers["Retry-After"]) == (503, "circuit_open", "1")
    assert re.findall(r"(\d+) s\b", error["message"]) == ["1"]


async def test_weights_hold_under_concurrency(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Weights 9:1 at concurrency 16: route b carries about a tenth of the calls, not an equal share."""
    upstreams = json.dumps(
        [{"name": "a", "url": sim.route_url("a"), "weight": 9}, {"name": "b", "url": sim.route_url("b"), "weight": 1}]
    )
    gateway = await make_gateway(upstreams=upstreams)
    for name in ("a", "b"):
        sim.set_faults(SimFaults(slow_first_token=0.02), route=name)
    semaphore = asyncio.Semaphore(16)

    async def one() -> int:
        async with semaphore:
            return (await gateway.post(CHAT, json=chat_body())).status

    assert set(await asyncio.gather(*(one() for _ in range(400)))) == {200}
    share_b = requests_to(sim, "b") / 400
    assert share_b == pytest.approx(0.1, abs=0.05)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "must list at least one route"),
        ('[{"name": "a", "url": "http://"}]', "route 'a': url: must be an http:// or https:// URL with a host"),
        ('[{"name": "a", "url": "http://x y/z"}]', "route 'a': url: must be an http:// or https:// URL"),
        ('[{"name": "a", "weight": true}]', "route 'a': weight"),
        ('[{"name": {"token": "SECRETTOK"}}]', "route #1: name"),
    ],
)
def test_nonsense_route_lists_are_refused_without_echoing_them(value: str, message: str) -> None:
    """Empty lists, URLs without a host, boolean weights are refused; an invalid name is never echoed."""
    with pytest.raises(ValidationError) as info:
        Settings(upstreams=value)
    line = describe_validation_error(info.value)
    assert message in line
    assert "SECRETTOK" not in line


def test_routes_and_the_single_upstream_settings_are_not_mixed() -> None:
    """GATEWAY_UPSTREAMS with GATEWAY_UPSTREAM_URL is refused: one of them would be silently ignored."""
    with pytest.raises(ValidationError) as info:
        Settings(upstreams='[{"name": "a"}]', upstream_url="http://127.0.0.1:1/x")
    assert "set GATEWAY_UPSTREAMS or GATEWAY_UPSTREAM_URL, not both" in describe_validation_error(info.value)


async def test_a_route_that_admits_again_while_the_pick_looked_sends_the_client_straight_back(
    make_gateway: GatewayFactory, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pick found no route, but one admits by the time the refusal is read: 503 with Retry-After 1, not a 500."""
    gateway = await routed_gateway(make_gateway, sim)
    routes = gateway.app[ROUTES]
    monkeypatch.setattr(routes, "pick", lambda *args, **kwargs: None)  # the race: every route looked busy
    response = await gateway.post(CHAT, json=chat_body())
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (503, "circuit_open")
    assert body["error"]["message"] == "no route admitted the call; retry in 1 s"
    assert response.headers["Retry-After"] == "1"


async def test_a_route_both_not_working_and_open_is_refused_for_not_working(
    make_gateway: GatewayFactory, sim: Simulator
) -> None:
    """Flag first: a route whose flag and breaker both refuse says upstream_not_working, with the flag's Retry-After."""
    gateway = await routed_gateway(make_gateway, sim, breaker_fail_max=1, retry_max=0)
    routes = gateway.app[ROUTES]
    for name in NAMES:
        routes[name].breaker.force_open()
        routes[name].flag.set_mode("not_working")
    assert all(routes[name].breaker.retry_after() > 0 for name in NAMES)
    response = await gateway.post(CHAT, json=chat_body())
    assert (response.status, (await response.json())["error"]["code"]) == (503, "upstream_not_working")
    assert response.headers["Retry-After"] == "30"  # the operator's pin says 30 s


class _Refusing:
    """A stand-in route that refuses with a given error (None: it admits)."""

    def __init__(self, name: str, error: AdmissionError | None) -> None:
        self.name = name
        self.error = error

    def refusal(self, model: str | None = None) -> AdmissionError | None:
        return self.error


_REFUSALS = st.lists(
    st.tuples(st.booleans(), st.sampled_from([0.0, 0.4, 1.0, 5.5, 30.0])), min_size=1, max_size=5
)


@given(_REFUSALS, st.booleans())
def test_the_pool_gives_a_breaker_refusal_before_a_flag_one_then_the_soonest(
    refusals: list[tuple[bool, float]], one_admits: bool
) -> None:
    """The rule, whatever the order: no refusal when a route admits; else the first refusal with the soonest
    Retry-After among the breakers' (among all when no breaker refuses), saying the soonest Retry-After of all."""
    errors: list[AdmissionError] = [
        CircuitOpenError("circuit breaker is open; retry in 9 s", retry_after=after)
        if circuit
        else UpstreamNotWorkingError("the upstream is not working", retry_after=after)
        for circuit, after in refusals
    ]
    routes: list[AdmissionError | None] = [*errors, None] if one_admits else list(errors)
    pool = RoutePool([cast(Route, _Refusing(f"r{i}", error)) for i, error in enumerate(routes)])
    # The expected choice first: the refusal rewrites the chosen error's Retry-After to the soonest.
    circuits = [error for error in errors if isinstance(error, CircuitOpenError)]
    expected = min(circuits or errors, key=lambda error: error.retry_after or 0.0)
    soonest = min(after for _, after in refusals)
    chosen = pool.refusal()
    if one_admits:
        assert chosen is None
        return
    assert chosen is expected
    assert chosen.retry_after == soonest
    assert chosen.message.endswith(f"; retry in {retry_after_seconds(soonest)} s")
