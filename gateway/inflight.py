"""Chat requests in flight, and the graceful drain that refuses new ones and cuts the stragglers."""

from __future__ import annotations

import asyncio
import logging

from gateway.errors import ShuttingDownError

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.05  # how often the drain looks whether the handlers have finished


class _Tracked:
    """What :meth:`InFlightTracker.track` returns: a class, not a generator, since every chat request enters one."""

    __slots__ = ("_active", "_task")

    def __init__(self, active: set[asyncio.Task[object]], task: asyncio.Task[object]) -> None:
        self._active = active
        self._task = task

    def __enter__(self) -> asyncio.Task[object]:
        self._active.add(self._task)
        return self._task

    def __exit__(self, *exc: object) -> None:
        self._active.discard(self._task)


class InFlightTracker:
    """Knows which chat handlers run, whether the gateway is draining, and which handlers it cut."""

    def __init__(self) -> None:
        self.draining = False
        self._active: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()

    @property
    def active(self) -> int:
        """Chat handlers in flight."""
        return len(self._active)

    def refuse_if_draining(self) -> None:
        """Raise :class:`ShuttingDownError` once the drain has begun."""
        if self.draining:
            raise ShuttingDownError("the gateway is shutting down", retry_after=1.0)

    def track(self) -> _Tracked:
        """Count the current task as in flight for the duration of the ``with`` block."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("track() needs a running task")
        return _Tracked(self._active, task)

    def was_cut(self, task: asyncio.Task[object] | None) -> bool:
        """Whether ``task`` was cancelled by the drain (not by its client leaving)."""
        return task is not None and task in self._cut

    def begin_shutdown(self) -> None:
        """Readiness fails and new chat requests are refused from now on."""
        self.draining = True

    async def drain(self, grace: float) -> None:
        """Refuse new work, give in-flight handlers ``grace`` seconds, then cancel the rest.

        Cut handlers are marked, so each can tell its client why (a stream error event, or a
        503) instead of dropping the connection.
        """
        self.begin_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._active and loop.time() < deadline:  # noqa: ASYNC110 - handlers finish on their own
            await asyncio.sleep(_POLL_SECONDS)
        if not self._active:
            return
        log.warning("shutdown grace over, cutting in-flight requests count=%d", len(self._active))
        self._cut = set(self._active)
        for task in self._cut:
            task.cancel()
        await asyncio.wait(self._cut, timeout=2.0)
