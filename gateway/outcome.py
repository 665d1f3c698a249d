"""How an upstream attempt ended, decided in one place.

Every way an attempt can end is one row of :func:`classify`: the answer completed; it was cut
short with no error (the client left, stalled, or the gateway had enough); the caller was
cancelled; the upstream failed; the upstream rejected this one request; the request's own
deadline passed; or something else broke (a bug, a client socket). The breaker, the failover
policy, the metrics and the trace span all read the :class:`Outcome`; none of them looks at the
error to decide for itself.

=================  =======================  =========  =============  ==================
row                kind                     counts     retryable      may fail over
=================  =======================  =========  =============  ==================
no error, ended    completed                no         no             no
no error, left     cut_short                no         no             no
cancelled          cancelled                no         no             no
rejection          rejected                 no         no             no
own deadline       own_deadline             no         no             no
other upstream     upstream_failure         yes        see below      yes
anything else      aborted                  no         no             no
=================  =======================  =========  =============  ==================

A failure is retryable (worth another try on the same route after a pause) when the client
has seen nothing of it (a non-streamed answer read whole is replayable), when it is a timeout
before any text, a 429 (402, out of credits, will not clear up), a 5xx, or a connect error.
A half-open trial that ends cut short is neutral: it frees its slot and decides nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Literal

from gateway.errors import (
    UPSTREAM_ERROR_KINDS,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

# The ``kind`` label of gateway_upstream_errors_total: every error kind, and ``deadline`` for an
# answer cut by the request's own total deadline. Its client still sees ``upstream_timeout``, but the
# route did not fail, so the status page and the alert rules must be able to leave it out.
UPSTREAM_ERROR_LABELS: Final[tuple[str, ...]] = (*UPSTREAM_ERROR_KINDS, "deadline")

OutcomeKind = Literal["completed", "cut_short", "cancelled", "rejected", "own_deadline", "upstream_failure", "aborted"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt's end means for its route and for the request."""

    kind: OutcomeKind
    counts_against_route: bool  # a failure for the route's breaker, and for the client's answer
    retryable: bool  # another attempt after a pause may succeed
    may_fail_over: bool  # another route may answer the same request
    cause: str = ""  # the failure's scope cause (see gateway/scope.py); empty when nothing counts

    @property
    def succeeded(self) -> bool:
        return self.kind == "completed"

    def error_label(self, error: UpstreamError) -> str:
        """The metric's ``kind`` for ``error`` ending an attempt with this outcome (see UPSTREAM_ERROR_LABELS)."""
        return "deadline" if self.kind == "own_deadline" else error.kind


COMPLETED: Final = Outcome("completed", counts_against_route=False, retryable=False, may_fail_over=False)
CUT_SHORT: Final = Outcome("cut_short", counts_against_route=False, retryable=False, may_fail_over=False)
CANCELLED: Final = Outcome("cancelled", counts_against_route=False, retryable=False, may_fail_over=False)
REJECTED: Final = Outcome("rejected", counts_against_route=False, retryable=False, may_fail_over=False)
OWN_DEADLINE: Final = Outcome("own_deadline", counts_against_route=False, retryable=False, may_fail_over=False)
ABORTED: Final = Outcome("aborted", counts_against_route=False, retryable=False, may_fail_over=False)


def classify(exc: BaseException | None, *, finished: bool = True) -> Outcome:
    """The outcome of an attempt that ended with ``exc`` (None: no error; ``finished``: it reached its end)."""
    if exc is None:
        return COMPLETED if finished else CUT_SHORT
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    if not isinstance(exc, UpstreamError):
        return ABORTED
    if isinstance(exc, UpstreamRejectedError):
        return REJECTED  # another route (or try) would get the same answer
    if isinstance(exc, UpstreamTimeoutError) and exc.phase == "total":
        # The request's own deadline passed while the upstream still worked: a long answer, not a failing
        # upstream (or any client could open the breaker by asking for essays), and no time is left.
        return OWN_DEADLINE
    return Outcome(
        "upstream_failure", counts_against_route=True, retryable=_retryable(exc), may_fail_over=True, cause=exc.cause
    )


def _retryable(error: UpstreamError) -> bool:
    if error.replayable:
        return True
    if isinstance(error, UpstreamTimeoutError):
        return error.phase in ("connect", "first_token")  # only a timeout before any text
    if isinstance(error, UpstreamRateLimitedError):
        # 429 may clear up (the policy still checks that Retry-After fits the deadline);
        # 402 (out of credits) will not, and retrying it only burns the retry budget.
        return error.upstream_status == 429
    if isinstance(error, UpstreamStatusError):
        return error.upstream_status >= 500
    return isinstance(error, UpstreamConnectError)
