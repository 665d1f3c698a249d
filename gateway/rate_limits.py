"""What a request's failed attempts add up to when they were rate limits.

Each route's 429 is a 502-class upstream failure while the gateway may still try
elsewhere. When every attempt was refused with 429 and nothing else answered, the
client's answer is itself a rate limit: 429 with ``Retry-After``, so that SDKs raise
their rate-limit error and back off. One 402 (out of credits), timeout or 5xx among the
attempts makes it an upstream failure again: backing off would not fix that.
"""

from __future__ import annotations

import logging
from typing import Final

from gateway.errors import AllRoutesRateLimitedError, UpstreamError, UpstreamRateLimitedError

log = logging.getLogger(__name__)

RATE_LIMITED_MESSAGE: Final = "the upstream is rate limiting the gateway on every route tried (HTTP 429)"
# When no route said how long to wait: a short pause, long enough for a token bucket to refill.
DEFAULT_RETRY_AFTER: Final = 1.0


class RateLimits:
    """Follows one request's failed attempts; :meth:`answer` is the error its client gets."""

    __slots__ = ("_earliest", "_only_429")

    def __init__(self) -> None:
        self._only_429 = True
        self._earliest: float | None = None

    def saw(self, error: UpstreamError) -> None:
        """Record one failed attempt."""
        if not (isinstance(error, UpstreamRateLimitedError) and error.upstream_status == 429):
            self._only_429 = False
            return
        if error.retry_after is not None:
            self._earliest = error.retry_after if self._earliest is None else min(self._earliest, error.retry_after)

    def answer(self, last: UpstreamError) -> UpstreamError:
        """``last`` as the client's error: a 429 when every attempt was a 429, else ``last`` unchanged."""
        if not self._only_429 or not isinstance(last, UpstreamRateLimitedError):
            return last
        retry_after = self._earliest if self._earliest is not None else DEFAULT_RETRY_AFTER
        # The upstream's own words may name another wait ("try again in 60 seconds") than the
        # Retry-After the client gets: they go to the log, and the message says only ours.
        log.info("every route tried answered 429 upstream_message=%r", last.message[:300])
        return AllRoutesRateLimitedError(RATE_LIMITED_MESSAGE, retry_after=retry_after)
