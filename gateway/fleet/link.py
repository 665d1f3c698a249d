"""The connection to Redis: every call bounded, failure detected once, reconnection in the background.

redis-py retries a timed-out command by default, so one call to a hung server takes seconds, not
its ``socket_timeout``; here the client makes no retries and every call also runs under
``asyncio.timeout``. Any failed call marks the link down; the background loop then reconnects
with backoff, resubscribes and calls ``on_up`` so the owner re-syncs. While it is down, callers
get ``None`` at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.probe_lease import LinkState

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
# A paused server is silent, not broken: only a failed ping tells the subscriber it is gone. Both
# connections are pinged: the pool's (calls) and the subscription's, whose pong comes back through
# the subscription itself, so a subscription that went silent is noticed within two heartbeats.
HEARTBEAT_SECONDS = 1.0
CLOSE_STEP_SECONDS = 0.5  # each step of closing the connections, at most


class RedisLink:
    """One Redis client and one subscription, with ``up`` telling whether both work."""

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        timeout: float,
        on_message: Callable[[bytes], None],
        on_up: Callable[[], Awaitable[None]],
        on_down: Callable[[], None],
        state: LinkState | None = None,
    ) -> None:
        self._url = url
        self._channel = channel
        self.timeout = timeout
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._client: redis.Redis | None = None
        self._lost = asyncio.Event()
        # Shared with the probe leases (made before the fleet, in the factory); only the link writes it.
        self._state = state or LinkState()
        self.settled = asyncio.Event()  # the first attempt synced or failed: sharing, or deciding alone
        self._told = False  # an outage was logged; the next one is logged after a successful sync
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """Connected, subscribed and synced: decisions are shared."""
        return self._state.up

    async def call(self, fn: Callable[[redis.Redis], Awaitable[T]]) -> T | None:
        """Run one bounded call; ``None`` (and the link marked down) if Redis is down, slow or fails.

        Works while connected, including during ``on_up`` (the re-sync), before ``up`` is set.
        """
        client = self._client
        if client is None or self._lost.is_set():
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await fn(client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(f"{type(exc).__name__}: {exc}")
            return None

    async def delete(self, key: str) -> bool:
        """Delete one key; False if Redis failed."""
        return await self.call(lambda client: client.delete(key)) is not None

    def start(self) -> None:
        """Connect in the background; the first success calls ``on_up``."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-link")

    async def stop(self) -> None:
        """Cancel the background loop and close the connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._state.up = False

    def _mark_down(self, why: str) -> None:
        """Once per outage: log, tell the owner; every call fails fast until the next session.

        ``why`` is logged whole (redis-py's messages are short): a cut made before the log filter scrubs
        the line could split a secret so that the scrubber no longer recognises it.
        """
        self._lost.set()
        self.settled.set()
        if self._state.up:
            self._state.up = False
            self._told = True
            log.warning("shared state lost, deciding locally until Redis is back reason=%r", why)
            self._on_down()
        elif not self._told:  # never connected (or never re-synced) since the last warning
            self._told = True
            log.warning("shared state unavailable, deciding locally until Redis answers reason=%r", why)

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                if await self._session():
                    backoff = BACKOFF_FIRST  # it worked for a while: the next outage starts over
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._mark_down(f"{type(exc).__name__}: {exc}")
            except Exception:  # a bug in a handler must not end sharing for good
                log.exception("shared state loop error")
                self._mark_down("internal error")
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> bool:
        """Connect, subscribe, re-sync, then relay messages until a call fails; whether it synced."""
        client = redis.Redis.from_url(
            self._url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(self.timeout * 3):
                await client.ping()
                await pubsub.subscribe(self._channel)
            self._lost.clear()
            self._client = client
            await self._on_up()
            if self._lost.is_set():
                return False  # the re-sync failed: back off as from any failed connection
            self._state.up, self._told = True, False
            self.settled.set()
            log.info("shared state connected channel=%s", self._channel)
            await self._relay(client, pubsub)
            return True
        finally:
            self._client = None  # ``up`` stays until _mark_down, which logs and tells the owner once
            # Closing must finish even when stop() cancels us meanwhile, or sockets leak.
            closing = asyncio.ensure_future(_close(client, pubsub))
            try:
                await asyncio.shield(closing)
            except asyncio.CancelledError:
                await closing
                raise

    async def _relay(self, client: redis.Redis, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + HEARTBEAT_SECONDS
        pong_due: float | None = None  # when the subscription's pong must have come back
        while not self._lost.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
            kind = None if message is None else message.get("type")
            if kind == "pong":
                pong_due = None
            elif kind == "message":
                try:
                    self._on_message(message["data"])
                except Exception:
                    log.exception("shared state message handler failed")
            now = loop.time()
            if pong_due is not None and now >= pong_due:
                raise TimeoutError("the subscription went silent (no pong)")
            if now >= next_ping:
                next_ping = now + HEARTBEAT_SECONDS
                async with asyncio.timeout(self.timeout):
                    await client.ping()
                    if pong_due is None:
                        await pubsub.ping()
                        pong_due = now + HEARTBEAT_SECONDS


async def _close(client: redis.Redis, pubsub: Any) -> None:
    """Close the subscription and every pooled socket (also one a cancelled call left checked out).

    Each step is bounded: a connection a cancelled call left mid-command (or a server that stopped
    answering) can make redis-py wait on it, and a shutdown must never hang on Redis.
    """
    steps = (pubsub.aclose, client.aclose, lambda: client.connection_pool.disconnect(inuse_connections=True))
    for step in steps:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_STEP_SECONDS):
                await step()
