"""Bounded polling for state owned by another component (no event to wait on)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], bool], *, within: float = 2.0, step: float = 0.01) -> None:
    """Return once ``condition()`` is true; fail with TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the state lives in other objects, nothing to await
            await asyncio.sleep(step)
