"""stop, max_tokens and usage emulated by the gateway, streamed and not, on answers split where the test says."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.simulator import SimFaults, Simulator
from gateway.tokens import shared_counter
from monitoring.processes import eventually
from tests.gateway_support import GatewayFactory, chat_body, sse_events
from tests.metrics_support import delta, scrape

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"
LONG: Final = " ".join(f"word{n} is here," for n in range(400))


async def ask(gateway: Client, *, stream: bool, **extra: Any) -> tuple[str, str | None, dict[str, Any] | None]:
    """Text, finish reason and usage of one answer, from either form."""
    response = await gateway.post(CHAT, json=chat_body("Say it", stream=stream, **extra))
    assert response.status == 200, await response.text()
    if not stream:
        body = await response.json()
        return body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"], body.get("usage")
    events = sse_events(await response.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    finish = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]][-1]
    usages = [chunk for chunk in chunks if "usage" in chunk]
    assert len(usages) <= 1
    if usages:
        assert usages[0]["choices"] == []
        assert chunks[-1] is usages[0]  # the last chunk, as OpenAI sends it
    return text, finish, usages[0]["usage"] if usages else None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_stop_split_across_chunks_is_cut_exactly(gateway: Client, sim: Simulator, stream: bool) -> None:
    """'END' arrives as 'EN' + 'D': the answer stops right before it, finish_reason stop, nothing after it sent."""
    sim.faults = SimFaults(answer_pieces=("Hello, wor", "ld. EN", "D and more"))
    text, finish, _ = await ask(gateway, stream=stream, stop="END")
    assert (text, finish) == ("Hello, world. ", "stop")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_the_earliest_of_several_stops_wins(gateway: Client, sim: Simulator, stream: bool) -> None:
    """Four stop strings: the one that begins first cuts, even if another one was split earlier."""
    sim.faults = SimFaults(answer_pieces=("alpha be", "ta gam", "ma delta"))
    text, finish, _ = await ask(gateway, stream=stream, stop=["delta", "gamma", "ta g", "zzz"])
    assert (text, finish) == ("alpha be", "stop")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_prefix_of_a_stop_that_never_completes_is_sent(gateway: Client, sim: Simulator, stream: bool) -> None:
    """'EN' held back for a possible 'END' is sent when the answer ends without one."""
    sim.faults = SimFaults(answer_pieces=("Hello EN", "TER the room EN"))
    text, finish, _ = await ask(gateway, stream=stream, stop="END")
    assert (text, finish) == ("Hello ENTER the room EN", "stop")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_stop_cancels_the_upstream(gateway: Client, sim: Simulator, stream: bool) -> None:
    """The upstream then stalls: the answer is complete at once and the gateway hangs up on the upstream."""
    sim.faults = SimFaults(answer_pieces=("one two ", "STOP three"), stall_after=2)
    text, finish, _ = await ask(gateway, stream=stream, stop="STOP")
    assert (text, finish) == ("one two ", "stop")
    await eventually(lambda: sim.stats.client_disconnects == 1)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_at_the_limit(gateway: Client, sim: Simulator, stream: bool, field: str) -> None:
    """A long answer with max_tokens 7: the first 7 tokens by the gateway's count, finish_reason length."""
    sim.faults = SimFaults(answer_pieces=tuple(LONG[i : i + 5] for i in range(0, 200, 5)), stall_after=40)
    text, finish, usage = await ask(gateway, stream=stream, stream_options={"include_usage": True}, **{field: 7})
    counter = shared_counter()
    assert (text, finish) == (counter.head(LONG, 7), "length")
    assert counter.count(text) == 7
    assert usage is not None
    assert usage["completion_tokens"] == 7
    await eventually(lambda: sim.stats.client_disconnects == 1)  # cancelled, though it stalls after 40 pieces


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_answer_within_max_tokens_stops_normally(gateway: Client, sim: Simulator, stream: bool) -> None:
    """An answer shorter than the limit is whole, finish_reason stop."""
    sim.faults = SimFaults(answer_pieces=("short ", "answer"))
    text, finish, _ = await ask(gateway, stream=stream, max_tokens=50)
    assert (text, finish) == ("short answer", "stop")


async def test_the_smaller_of_both_limits_wins(gateway: Client, sim: Simulator) -> None:
    """max_tokens 9 and max_completion_tokens 4: 4 tokens."""
    sim.faults = SimFaults(answer_bytes=4096)
    text, finish, usage = await ask(gateway, stream=False, max_tokens=9, max_completion_tokens=4)
    assert (finish, usage and usage["completion_tokens"]) == ("length", 4)
    assert shared_counter().count(text) == 4


async def test_usage_in_every_plain_answer(gateway: Client, sim: Simulator) -> None:
    """A plain answer carries usage: the prompt as OpenAI counts it, the answer's tokens, their sum."""
    counter = shared_counter()
    _, _, usage = await ask(gateway, stream=False)
    answer = "[gpt-3.5-turbo] You said: Say it"
    prompt = counter.prompt([("user", "Say it")])
    assert usage == {
        "prompt_tokens": prompt,
        "completion_tokens": counter.count(answer),
        "total_tokens": prompt + counter.count(answer),
    }


async def test_usage_streamed_equals_plain(gateway: Client, sim: Simulator) -> None:
    """include_usage: the final chunk (empty choices) has the same usage as the plain answer to the same prompt."""
    sim.faults = SimFaults(answer_pieces=("Tokens ", "are counted ", "the same way."))
    plain = await ask(gateway, stream=False)
    streamed = await ask(gateway, stream=True, stream_options={"include_usage": True})
    assert plain == streamed
    assert plain[2] is not None
    assert plain[2]["completion_tokens"] > 0


async def test_no_usage_chunk_unless_asked(gateway: Client) -> None:
    """Without stream_options.include_usage a stream has no usage chunk."""
    _, _, usage = await ask(gateway, stream=True)
    assert usage is None


async def test_tokens_are_counted_by_route_model_and_direction(gateway: Client, sim: Simulator) -> None:
    """gateway_tokens_total grows by the answer's usage, labelled by the resolved model."""
    before = await scrape(gateway)
    _, _, usage = await ask(gateway, stream=False, model="gemini")
    after = await scrape(gateway)
    assert usage is not None
    labels = {"route": "default", "model": "google-gemini"}
    assert delta(before, after, "gateway_tokens_total", direction="prompt", **labels) == usage["prompt_tokens"]
    assert delta(before, after, "gateway_tokens_total", direction="completion", **labels) == usage["completion_tokens"]


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """Yield a list that, on exit, holds the longest the event loop was blocked (a 10 ms sleeper's overshoot)."""
    worst = [0.0]
    loop = asyncio.get_running_loop()

    async def sleeper() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            worst[0] = max(worst[0], loop.time() - before - 0.01)

    task = asyncio.create_task(sleeper())
    try:
        yield worst
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("limit", [100, 100_000])
@pytest.mark.parametrize("piece", ["\n", " ", "a", "-----"])
async def test_counting_a_long_run_never_blocks_the_loop(
    gateway: Client, sim: Simulator, piece: str, limit: int, stream: bool
) -> None:
    """4,000 fragments that make one pre-tokenizer piece, with max_tokens: the loop is never blocked 0.5 s."""
    sim.faults = SimFaults(answer_pieces=(piece,) * 4000)
    async with loop_lag() as worst:
        text, finish, usage = await ask(
            gateway, stream=stream, max_tokens=limit, stream_options={"include_usage": True}
        )
    assert worst[0] < 0.5
    counter = shared_counter()
    whole = piece * 4000
    assert whole.startswith(text)
    assert usage is not None
    assert usage["completion_tokens"] == counter.count(text) <= limit
    # Counts are not monotonic in a run (3,165 newlines count 101, 3,200 count 100): the first excess cuts.
    assert (finish, text) == (("length", text) if counter.count(whole) > limit else ("stop", whole))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_counting_a_large_prompt_and_answer_never_blocks_the_loop(
    make_gateway: GatewayFactory, stream: bool
) -> None:
    """A 1 MB prompt of random letters, echoed back: both are counted off the loop, which never stalls 0.5 s."""
    gateway = await make_gateway(max_body_bytes=2 * 1024 * 1024)
    # 1,000,000 letters: the upstream request stays below the 1 MiB at which aiohttp warns about a bytes body.
    prompt = "".join(random.Random(7).choices(string.ascii_letters, k=1_000_000))
    async with loop_lag() as worst:
        body = json.dumps(chat_body(prompt, stream=stream, stream_options={"include_usage": True})).encode()
        response = await gateway.post(CHAT, data=io.BytesIO(body), headers={"Content-Type": "application/json"})
        raw = await response.text()
    assert response.status == 200
    assert worst[0] < 0.5
    usage = json.loads(sse_events(raw)[-2] if stream else raw)["usage"]
    counter = shared_counter()
    answer = f"[gpt-3.5-turbo] You said: {prompt}"
    assert usage["prompt_tokens"] == counter.prompt([("user", prompt)])
    assert usage["completion_tokens"] == counter.count(answer)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_answer_that_reaches_the_limit_ends_at_once(
    make_gateway: GatewayFactory, sim: Simulator, stream: bool
) -> None:
    """Exactly max_tokens arrive and the upstream stalls: finish_reason length at once, not a timeout."""
    gateway = await make_gateway(timeout_idle=1, retry_max=0)
    sim.faults = SimFaults(answer_pieces=("one two three", " four"), stall_after=1)
    started = asyncio.get_running_loop().time()
    text, finish, _ = await ask(gateway, stream=stream, max_tokens=3)
    assert (text, finish) == ("one two three", "length")
    assert asyncio.get_running_loop().time() - started < 0.5


README_LENGTH_CLAIM: Final = (
    "an answer cut for length counts at most `max_tokens`, and usually exactly that; it can fall\n"
    "short by more than one token, because a cut never splits a character (one character can be\n"
    "up to 4 tokens: 🦜 is 3) and text can tokenise differently once more of it has arrived."
)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_length_cut_can_fall_short_by_more_than_one_token(
    gateway: Client, sim: Simulator, stream: bool
) -> None:
    """'a🦜' is 4 tokens (🦜 is 3): max_tokens 3 sends 'a', 2 short, as the README's corrected sentence says."""
    sim.faults = SimFaults(answer_pieces=("a", "🦜"))
    text, finish, usage = await ask(gateway, stream=stream, max_tokens=3, stream_options={"include_usage": True})
    assert (text, finish) == ("a", "length")
    assert usage is not None
    assert usage["completion_tokens"] == 1


def test_the_readme_says_a_length_cut_can_fall_short() -> None:
    """The README's sentence on length cuts is the corrected one (not "one token fewer")."""
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert " ".join(README_LENGTH_CLAIM.split()) in readme
    assert "one token fewer" not in readme
