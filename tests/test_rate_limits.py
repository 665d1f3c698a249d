"""Rate limits reach the client as 429 only when every route tried answered 429."""

from __future__ import annotations

import json
import re

import pytest

from gateway.errors import AllRoutesRateLimitedError, UpstreamRateLimitedError, UpstreamStatusError
from gateway.rate_limits import DEFAULT_RETRY_AFTER, RateLimits
from gateway.simulator import SimFaults, Simulator
from tests.gateway_support import GatewayFactory, chat_body

CHAT = "/v1/chat/completions"


def _routes(sim: Simulator) -> str:
    return json.dumps([{"name": n, "url": sim.route_url(n)} for n in ("a", "b")])


def _limited(retry_after: float | None = None, status: int = 429) -> UpstreamRateLimitedError:
    return UpstreamRateLimitedError("upstream rate limit", upstream_status=status, retry_after=retry_after)


def test_only_429s_answer_429_with_the_earliest_retry_after() -> None:
    """Two 429s (12 s and 5 s): the client's error is a 429 saying 5 s in the message and the header value."""
    limits = RateLimits()
    limits.saw(_limited(12))
    limits.saw(_limited(4.2))
    answer = limits.answer(_limited(12))
    assert isinstance(answer, AllRoutesRateLimitedError)
    assert (answer.status, answer.retry_after, answer.code) == (429, 5, "upstream_rate_limited")
    assert answer.message.endswith("; retry in 5 s")


def test_a_429_without_retry_after_gets_the_default() -> None:
    """No Retry-After from any route: the client is told the default second."""
    limits = RateLimits()
    limits.saw(_limited())
    assert limits.answer(_limited()).retry_after == DEFAULT_RETRY_AFTER


@pytest.mark.parametrize(
    "other",
    [_limited(status=402), UpstreamStatusError("upstream returned HTTP 500", upstream_status=500)],
    ids=["402", "500"],
)
def test_any_other_failure_keeps_the_last_error(other: UpstreamStatusError) -> None:
    """A 402 or a 5xx among the attempts: the last error stays a 502-class upstream error."""
    limits = RateLimits()
    limits.saw(other)
    last = _limited(3)
    limits.saw(last)
    assert limits.answer(last) is last
    assert last.status == 502


async def test_every_route_429_is_a_429(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Routes a and b both answer 429 (Retry-After 30 and 40): 429, Retry-After 30, the message says 30 s."""
    gateway = await make_gateway(upstreams=_routes(sim), retry_max=2)
    sim.set_faults(SimFaults(http_status=429, retry_after=30), route="a")
    sim.set_faults(SimFaults(http_status=429, retry_after=40), route="b")
    response = await gateway.post(CHAT, json=chat_body())
    error = (await response.json())["error"]
    assert (response.status, error["code"], error["type"]) == (429, "upstream_rate_limited", "rate_limit_error")
    assert response.headers["Retry-After"] == "30"
    assert re.findall(r"(\d+) s\b", error["message"]) == ["30"]


async def test_a_429_and_a_5xx_is_a_502(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Route a answers 500 and b 429: not a rate limit the client can wait out, so 502."""
    gateway = await make_gateway(upstreams=_routes(sim), retry_max=1)
    sim.set_faults(SimFaults(http_status=500), route="a")
    sim.set_faults(SimFaults(http_status=429, retry_after=30), route="b")
    response = await gateway.post(CHAT, json=chat_body())
    assert response.status == 502
    assert sim.route_stats("a").requests_total == sim.route_stats("b").requests_total == 1


async def test_402_stays_a_502(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """402 (out of credits) is no rate limit to back off from: 502 upstream_rate_limited, as before."""
    gateway = await make_gateway(retry_max=0)
    sim.faults = SimFaults(http_status=402)
    response = await gateway.post(CHAT, json=chat_body())
    assert (response.status, (await response.json())["error"]["code"]) == (502, "upstream_rate_limited")


async def test_the_upstreams_own_wait_stays_out_of_the_message(
    make_gateway: GatewayFactory, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream says 'try again in 60 seconds' with Retry-After 3: the only seconds in the message are 3."""
    gateway = await make_gateway(retry_max=0)
    sim.faults = SimFaults(http_status=429, retry_after=3, http_body='{"message": "try again in 60 seconds"}')
    with caplog.at_level("INFO"):
        response = await gateway.post(CHAT, json=chat_body())
    error = (await response.json())["error"]
    assert (response.status, response.headers["Retry-After"]) == (429, "3")
    assert re.findall(r"(\d+) ?s(?:ec|econds?)?\b", error["message"]) == ["3"]
    assert "60 seconds" in caplog.text  # the upstream's words are in the log line only
