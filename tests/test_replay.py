"""A plain answer broken after its first token is replayed (its client has seen nothing); a stream is not."""

from __future__ import annotations

import json

from gateway.simulator import SimFaults, Simulator, expected_answer
from tests.gateway_support import GatewayFactory, chat_body, sse_events
from tests.metrics_support import delta, scrape

CHAT = "/v1/chat/completions"
QUESTION = "a question long enough for eight chunks"


async def test_a_broken_plain_answer_fails_over(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """Route a resets after 2 chunks: the client gets b's whole answer, counted as one failover from a."""
    routes = [
        {"name": "a", "url": sim.route_url("a"), "weight": 1000},
        {"name": "b", "url": sim.route_url("b"), "weight": 0.001},
    ]
    gateway = await make_gateway(upstreams=json.dumps(routes), retry_max=2)
    sim.set_faults(SimFaults(reset_after=2), route="a")
    before = await scrape(gateway)
    response = await gateway.post(CHAT, json=chat_body(QUESTION))
    assert response.status == 200
    body = await response.json()
    assert body["choices"][0]["message"]["content"] == expected_answer("gpt-3.5-turbo", QUESTION)
    after = await scrape(gateway)
    assert delta(before, after, "gateway_failovers_total", from_route="a") == 1
    assert (sim.route_stats("a").requests_total, sim.route_stats("b").requests_total) == (1, 1)


async def test_a_broken_plain_answer_is_retried(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """One route that breaks mid-answer once: the retry answers, counted as one retry."""
    gateway = await make_gateway(retry_max=2)
    sim.faults = SimFaults(reset_after=2, count=1)
    before = await scrape(gateway)
    response = await gateway.post(CHAT, json=chat_body(QUESTION))
    assert response.status == 200
    assert (await response.json())["choices"][0]["message"]["content"] == expected_answer("gpt-3.5-turbo", QUESTION)
    after = await scrape(gateway)
    assert delta(before, after, "gateway_upstream_retries_total", provider="flowgpt", route="default") == 1
    assert sim.stats.requests_total == 2


async def test_a_broken_stream_is_not_replayed(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """The same fault on a stream: the client already has text, so it ends with an error event, one attempt."""
    gateway = await make_gateway(retry_max=2)
    sim.faults = SimFaults(reset_after=2, count=1)
    response = await gateway.post(CHAT, json=chat_body(QUESTION, stream=True))
    events = sse_events(await response.text())
    assert json.loads(events[-1])["error"]["code"] == "upstream_interrupted"
    assert sim.stats.requests_total == 1


async def test_replays_stop_at_retry_max(make_gateway: GatewayFactory, sim: Simulator) -> None:
    """A route that always breaks mid-answer: retry_max 1 gives two attempts, then the 502."""
    gateway = await make_gateway(retry_max=1)
    sim.faults = SimFaults(reset_after=2)
    response = await gateway.post(CHAT, json=chat_body(QUESTION))
    assert (response.status, (await response.json())["error"]["code"]) == (502, "upstream_interrupted")
    assert sim.stats.requests_total == 2
