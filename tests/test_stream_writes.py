"""A stream's SSE events leave one write per upstream read: what arrives together leaves together."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.app_keys import INFLIGHT
from gateway.simulator import SimOptions, Simulator, expected_answer
from gateway.tokens import TokenCounter
from tests.gateway_support import GatewayFactory, chat_body, sse_events


@pytest.fixture(name="sse_writes")
def sse_writes_fixture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, bytes]]:
    """Every write to an SSE response in this process, with its time."""
    writes: list[tuple[float, bytes]] = []
    real_write = web.StreamResponse.write

    async def recording_write(self: web.StreamResponse, data: Any) -> None:
        if self.content_type == "text/event-stream":
            writes.append((time.monotonic(), bytes(data)))
        await real_write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", recording_write)
    return writes


@pytest.fixture(name="paced_sim")
async def paced_sim_fixture() -> AsyncIterator[Simulator]:
    async with Simulator(SimOptions(seed=1, chunks=4, chunk_delay=0.15)) as simulator:
        yield simulator


async def test_an_answer_that_arrived_whole_leaves_in_one_write(
    make_gateway: GatewayFactory, sse_writes: list[tuple[float, bytes]]
) -> None:
    gateway = await make_gateway()
    response = await gateway.post("/v1/chat/completions", json=chat_body("All at once", stream=True))
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected_answer(
        "gpt-3.5-turbo", "All at once"
    )
    assert len(chunks) > 3  # still one event per fragment, role and stop
    # The zero-delay simulator sends the whole answer in one segment: role, every fragment and the end
    # leave together (before: one write per event).
    assert len(sse_writes) == 1


async def test_a_paced_answer_is_not_held_back(
    make_gateway: GatewayFactory, paced_sim: Simulator, sse_writes: list[tuple[float, bytes]]
) -> None:
    gateway = await make_gateway(upstream_url=paced_sim.url)
    sent = time.monotonic()
    response = await gateway.post("/v1/chat/completions", json=chat_body("One by one", stream=True))
    text = await response.text()
    assert sse_events(text)[-1] == "[DONE]"
    # Four fragments 0.15 s apart: each leaves when it arrives, not with the end.
    assert len(sse_writes) >= 4
    first_at = sse_writes[0][0]
    last_at = sse_writes[-1][0]
    assert last_at - first_at >= 0.3  # spread over the answer's pacing, not written at the end
    assert first_at - sent < last_at - sent
    assert b'"role":"assistant"' in sse_writes[0][1]  # the role leaves with the first fragment


async def test_a_shutdown_cut_while_the_end_is_counted_still_sends_the_held_text(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events held to leave with the end are written before the shutdown's error event."""
    gateway = await make_gateway()
    settling = asyncio.Event()
    real_count_soon = TokenCounter.count_soon

    async def slow_count(self: TokenCounter, text: str) -> int:  # as a long answer is counted off the loop
        settling.set()
        await asyncio.sleep(5)
        return await real_count_soon(self, text)

    monkeypatch.setattr(TokenCounter, "count_soon", slow_count)
    request = asyncio.create_task(gateway.post("/v1/chat/completions", json=chat_body("All at once", stream=True)))
    await asyncio.wait_for(settling.wait(), 5)
    assert gateway.app is not None
    await gateway.app[INFLIGHT].drain(0.05)
    events = sse_events(await (await request).text())
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if "choices" in c)
    assert text == expected_answer("gpt-3.5-turbo", "All at once")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["error"]["code"] == "shutting_down"
