"""gateway/ids.py: unique ids without a system call each, and no repeats across a fork."""

from __future__ import annotations

import multiprocessing
import re

from gateway.ids import hex_id, random_bytes


def _child_ids(queue: multiprocessing.Queue[list[str]]) -> None:
    queue.put([hex_id(16) for _ in range(100)])


def test_ids_have_their_length_and_do_not_repeat() -> None:
    """100,000 request-sized ids: all 32 lowercase hex characters, all different."""
    ids = [hex_id(16) for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids[:1000])
    assert len(set(ids)) == len(ids)
    assert len(random_bytes(19)) == 19


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    """The generator is re-seeded in a forked child: its next ids differ from the parent's next ids."""
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = context.Queue()
    child = context.Process(target=_child_ids, args=(queue,))
    child.start()
    theirs = queue.get(timeout=10)
    child.join(timeout=10)
    ours = [hex_id(16) for _ in range(100)]
    assert not set(ours) & set(theirs)
