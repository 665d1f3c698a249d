"""gateway/answer.py: the first fragment comes first, and how the stream ended is remembered."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest

from gateway.answer import Answer
from gateway.errors import UpstreamInterruptedError
from tests.gateway_support import read_all

if TYPE_CHECKING:
    from gateway.attempt import Attempt
    from gateway.flowgpt.client import FlowGptStream


class _Stream:
    """What Answer reads of a FlowGptStream: the fragments of each upstream read in turn, then an end or an error."""

    def __init__(self, reads: list[list[str]], error: Exception | None) -> None:
        self._reads = reads
        self._error = error

    def take_buffered(self) -> list[str]:
        return []  # nothing decoded beside the first fragment

    @property
    def drained(self) -> bool:
        return not self._reads and self._error is None

    async def next_fragments(self) -> list[str]:
        if self._reads:
            return self._reads.pop(0)
        if self._error is not None:
            raise self._error
        return []


def _answer(reads: list[list[str]], error: Exception | None = None) -> Answer:
    # Answer only reads its stream and carries its attempt for the scope that settles it.
    stream = cast("FlowGptStream", _Stream(reads, error))
    return Answer(cast("Attempt", None), stream, "Hel", deadline=9.0)


async def test_the_first_fragment_leads_and_a_clean_end_marks_completed() -> None:
    answer = _answer([["lo", ", world"]])
    assert await read_all(answer) == "Hello, world"
    assert answer.completed
    assert answer.error is None
    assert await answer.next_fragments() == []


async def test_an_upstream_error_mid_stream_is_raised_and_remembered() -> None:
    cut = UpstreamInterruptedError("the upstream closed the stream mid-answer")
    answer = _answer([["lo"]], cut)
    assert [await answer.next_fragments(), await answer.next_fragments()] == [["Hel"], ["lo"]]
    with pytest.raises(UpstreamInterruptedError):
        await answer.next_fragments()
    assert answer.error is cut
    assert not answer.completed


async def test_an_answer_left_early_is_neither_completed_nor_failed() -> None:
    """A client that goes away mid-answer: the scope settles it as neither outcome."""
    answer = _answer([["lo"], ["!"]])
    assert await answer.next_fragments() == ["Hel"]
    assert not answer.drained
    assert not answer.completed
    assert answer.error is None


async def test_drained_once_the_last_read_is_taken() -> None:
    """drained says the next read ends the answer without a wait: the handler sends the last events with the end."""
    answer = _answer([["lo"]])
    assert not answer.drained  # the first fragment is still held
    assert await answer.next_fragments() == ["Hel"]
    assert await answer.next_fragments() == ["lo"]
    assert answer.drained
    assert not answer.completed  # not before the end is read
    assert await answer.next_fragments() == []
    assert answer.completed
