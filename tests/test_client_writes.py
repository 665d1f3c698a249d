"""gateway.client_writes: a write that blocks past its deadline ends the guarded block; others pass."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import web

from gateway.client_writes import ClientStalledError, ClientWriteGuard


class FakeResponse:
    """Stands in for a StreamResponse whose client reads (writes return) or not (writes block)."""

    def __init__(self, *, reads: bool) -> None:
        self.reads = reads
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        if not self.reads:
            await asyncio.Event().wait()  # the transport buffer is full and stays full
        self.written.append(data)

    async def write_eof(self) -> None:
        await self.write(b"")


def as_response(fake: FakeResponse) -> web.StreamResponse:
    return cast(web.StreamResponse, cast(Any, fake))


async def test_a_reading_client_is_never_cut() -> None:
    """Writes that return are not timed out, however many, within the deadline."""
    fake = FakeResponse(reads=True)
    async with ClientWriteGuard(write_timeout=0.05, total_remaining=5.0) as guard:
        for index in range(50):
            await guard.write(as_response(fake), b"%d" % index)
            await asyncio.sleep(0.002)  # the stream takes longer than one write timeout in total
        await guard.write_eof(as_response(fake))
    assert len(fake.written) == 51


@pytest.mark.parametrize(("write_timeout", "total_remaining"), [(0.05, 5.0), (5.0, 0.05)])
async def test_a_blocked_write_is_cut_at_the_write_timeout_or_the_total_deadline(
    write_timeout: float, total_remaining: float
) -> None:
    """A write that never returns raises ClientStalledError after the earlier of the two limits."""
    fake = FakeResponse(reads=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ClientStalledError) as info:
        async with ClientWriteGuard(write_timeout=write_timeout, total_remaining=total_remaining) as guard:
            await guard.write(as_response(fake), b"data: x\n\n")
    waited = loop.time() - started
    assert 0.04 <= waited < 1.0
    assert info.value.waited == pytest.approx(waited, abs=0.05)


async def test_other_timeouts_inside_the_block_are_not_mistaken_for_a_stalled_client() -> None:
    """A TimeoutError raised by the code inside (not by the guard) passes through unchanged."""
    with pytest.raises(TimeoutError):
        async with ClientWriteGuard(write_timeout=5.0, total_remaining=5.0):
            raise TimeoutError("an upstream read timed out")
