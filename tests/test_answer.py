"""gateway/answer.py: the first fragment comes first, and how the stream ended is remembered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import pytest

from gateway.answer import Answer
from gateway.errors import UpstreamInterruptedError

if TYPE_CHECKING:
    from gateway.attempt import Attempt
    from gateway.flowgpt.client import FlowGptStream


async def _fragments(rest: list[str], error: Exception | None = None) -> AsyncIterator[str]:
    for fragment in rest:
        yield fragment
    if error is not None:
        raise error


def _answer(rest: list[str], error: Exception | None = None) -> Answer:
    # Answer only iterates its stream and carries its attempt for the scope that settles it.
    stream = cast("FlowGptStream", _fragments(rest, error))
    return Answer(cast("Attempt", None), stream, "Hel", deadline=9.0)


async def test_the_first_fragment_leads_and_a_clean_end_marks_completed() -> None:
    answer = _answer(["lo", ", world"])
    assert await answer.read_all() == "Hello, world"
    assert answer.completed
    assert answer.error is None


async def test_an_upstream_error_mid_stream_is_raised_and_remembered() -> None:
    cut = UpstreamInterruptedError("the upstream closed the stream mid-answer")
    answer = _answer(["lo"], cut)
    assert [await anext(answer), await anext(answer)] == ["Hel", "lo"]
    with pytest.raises(UpstreamInterruptedError):
        await anext(answer)
    assert answer.error is cut
    assert not answer.completed


async def test_an_answer_left_early_is_neither_completed_nor_failed() -> None:
    """A client that goes away mid-answer: the scope settles it as neither outcome."""
    answer = _answer(["lo", "!"])
    assert await anext(answer) == "Hel"
    assert not answer.completed
    assert answer.error is None
