"""Async FlowGpt client: signed requests, a tolerant NDJSON stream, classified errors.

The client owns no session (one ``aiohttp.ClientSession`` per app is injected)
and imports no metrics library: it reports through a small observer. Every
aiohttp exception is translated into the gateway's hierarchy here and only here.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
import orjson

from gateway.deadlines import Deadline
from gateway.errors import (
    TimeoutPhase,
    UpstreamConnectError,
    UpstreamError,
    UpstreamInterruptedError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from gateway.flowgpt.ndjson import NdjsonDecoder
from gateway.flowgpt.protocol import Message, build_body, signed_headers
from gateway.flowgpt.status import raise_for_status
from gateway.overhead import waiting
from gateway.redact import redact_sample
from gateway.route_config import DEFAULT_ROUTE

if TYPE_CHECKING:
    from pydantic import SecretStr

log = logging.getLogger(__name__)


class ClientObserver(Protocol):
    """What the client reports while it works (the metrics module implements it)."""

    def json_parse_failure(self) -> None:
        """One NDJSON line could not be used."""


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """A chat request reduced to what FlowGpt understands; ``model`` is already resolved."""

    model: str
    messages: Sequence[Message]
    temperature: float | None = None


class FlowGptClient:
    """Speaks FlowGpt's protocol over an injected session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        url: str,
        token: SecretStr,
        proxy: str | None = None,
        connect_timeout: float | None = 10.0,
        max_line_bytes: int = 1024 * 1024,
        observer: ClientObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        route: str = DEFAULT_ROUTE,
        scrub: Callable[[str], str] | None = None,
        add_headers: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self._session = session
        self._scrub = scrub
        self._add_headers = add_headers  # e.g. traceparent, when an operator allows it
        self._route = route  # named in log lines
        self._clock = clock
        self._url = url
        self._token = token
        self._proxy = proxy
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, connect=connect_timeout)
        self._max_line_bytes = max_line_bytes
        self._observer = observer

    @property
    def url(self) -> str:
        """The upstream endpoint."""
        return self._url

    async def open(
        self, prompt: ChatPrompt, *, idle_timeout: float | None = None, deadline: float | None = None
    ) -> FlowGptStream:
        """Send ``prompt`` and return the answer stream once a 2xx NDJSON response has begun.

        ``idle_timeout`` (seconds between reads) and ``deadline`` (a reading of the client's
        clock) bound every later read of the stream. Raises an :class:`UpstreamError` for
        connection failures and for any response that is not a usable stream (classified
        like g4f did).
        """
        headers = signed_headers(self._token.get_secret_value())
        if self._add_headers is not None:
            self._add_headers(headers)
        body = orjson.dumps(build_body(prompt.model, prompt.messages, prompt.temperature))
        try:
            response = await self._session.post(
                self._url, data=body, headers=headers, proxy=self._proxy, timeout=self._timeout
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeoutError("timed out connecting to the upstream", phase="connect") from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise UpstreamConnectError(f"cannot resolve the upstream host {exc.host!r} (DNS)") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(
                f"cannot connect to the upstream at {exc.host}:{exc.port}: {type(exc).__name__}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamConnectError(f"cannot reach the upstream: {type(exc).__name__}") from exc
        try:
            await raise_for_status(response, self._scrub)
        except BaseException:
            response.release()
            raise
        return FlowGptStream(
            response, self._new_decoder(), idle_timeout=idle_timeout, deadline=deadline, clock=self._clock
        )

    def _new_decoder(self) -> NdjsonDecoder:
        observer = self._observer

        def on_bad_line(sample: bytes, reason: str) -> None:
            if observer is not None:
                observer.json_parse_failure()
            # One warning per stream (with a redacted sample); the rest only at debug, so a
            # garbage-spewing upstream cannot flood the log.
            if decoder.bad_lines == 1:
                log.warning(
                    "upstream sent an unusable line route=%s reason=%s sample=%r",
                    self._route,
                    reason,
                    redact_sample(sample),
                )
            else:
                log.debug("upstream sent an unusable line reason=%s", reason)

        decoder = NdjsonDecoder(max_line_bytes=self._max_line_bytes, on_bad_line=on_bad_line)
        return decoder


class FlowGptStream:
    """The text fragments of one answer, read lazily; always :meth:`aclose` it.

    ``deadline`` (a ``clock()`` reading) and ``idle_timeout`` bound every read; they
    are fixed when the stream opens, next to the reads they bound.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        decoder: NdjsonDecoder,
        *,
        idle_timeout: float | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._response = response
        self._decoder = decoder
        self._pending: collections.deque[str] = collections.deque()
        self._eof = False
        self.fragments_read = 0
        self._idle_timeout = idle_timeout
        self._deadline = deadline
        self._clock = clock

    @property
    def bad_lines(self) -> int:
        """Lines skipped so far."""
        return self._decoder.bad_lines

    def __aiter__(self) -> FlowGptStream:
        return self

    async def __anext__(self) -> str:
        while not self._pending:
            if self._eof:
                raise StopAsyncIteration
            await self._read_more()
        self.fragments_read += 1
        return self._pending.popleft()

    @property
    def drained(self) -> bool:
        """Nothing decoded is waiting and every byte has arrived: the next read ends the stream without a wait."""
        return not self._pending and (self._eof or self._response.content.at_eof())

    async def next_fragments(self) -> list[str]:
        """The fragments decoded so far, or else those of the next read that brings any; [] at the end."""
        while not self._pending:
            if self._eof:
                return []
            await self._read_more()
        return self.take_buffered()

    def take_buffered(self) -> list[str]:
        """The fragments already decoded and waiting, taken at once: no await per fragment for a reader of them all."""
        taken = list(self._pending)
        self._pending.clear()
        self.fragments_read += len(taken)
        return taken

    async def read_all(self) -> str:
        """The rest of the answer as one string."""
        return "".join([fragment async for fragment in self])

    async def aclose(self) -> None:
        """Give the connection back (or drop it, if the body was not fully read)."""
        if not self._eof:
            self._response.close()  # an unread body makes the connection unusable for reuse
        self._response.release()

    async def _read_more(self) -> None:
        content = self._response.content
        try:
            # Buffered data, or the end, needs no wait and so no timer: the common case under load.
            chunk = b"" if content.at_eof() else content.read_nowait()
            if not chunk and not content.at_eof():
                timeout, phase = self._read_budget()
                try:
                    with waiting(), Deadline(timeout):  # only a read that waits is not the gateway's own time
                        chunk = await content.readany()
                except TimeoutError as exc:
                    if phase == "total":  # the request's own deadline ran out, not the upstream's patience
                        raise UpstreamTimeoutError(
                            f"the answer did not end within the request's total deadline ({timeout:.1f}s left)",
                            phase="total",
                        ) from exc
                    raise UpstreamTimeoutError(f"upstream sent nothing for {timeout:.1f}s", phase=phase) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamInterruptedError(f"upstream stream broke: {type(exc).__name__}") from exc
        if chunk:
            self._pending.extend(self._decoder.feed(chunk))
            return
        self._eof = True
        self._pending.extend(self._decoder.finish())
        if not self._pending and self.fragments_read == 0:
            if self._decoder.bad_lines:
                raise UpstreamProtocolError(
                    f"upstream stream had {self._decoder.bad_lines} unparseable lines and no text"
                )
            raise UpstreamProtocolError("upstream closed the stream without sending any text")

    def _read_budget(self) -> tuple[float | None, TimeoutPhase]:
        # Silence before the first fragment is the caller's first-token limit, not "idle".
        idle = self._idle_timeout if self.fragments_read > 0 else None
        if self._deadline is None:
            return idle, "idle"
        remaining = max(0.0, self._deadline - self._clock())
        if idle is not None and idle < remaining:
            return idle, "idle"
        return remaining, "total"


__all__ = ["ChatPrompt", "ClientObserver", "FlowGptClient", "FlowGptStream", "UpstreamError"]
