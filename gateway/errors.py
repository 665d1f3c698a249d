"""One error hierarchy for the whole gateway.

::

    GatewayError                      status, OpenAI type and code, message
    ├── RequestError                  the caller's fault (4xx); never trips the breaker
    │   ├── InvalidRequestError       400  invalid_request / invalid_json
    │   ├── UnsupportedParameterError 400  unsupported_parameter (a field FlowGpt cannot honour)
    │   ├── UnsupportedContentError   400  unsupported_content (a message shape or part it cannot carry)
    │   ├── AuthenticationError       401  invalid_api_key
    │   ├── ForbiddenError            403  forbidden (a wrong admin token)
    │   ├── NotFoundError             404  not_found
    │   ├── ModelNotFoundError        404  model_not_found
    │   ├── PayloadTooLargeError      413  request_too_large
    │   └── RequestTimeoutError       408  request_timeout
    ├── AdmissionError                refused without contacting the upstream
    │   ├── CircuitOpenError          503  circuit_open / half_open_busy
    │   ├── UpstreamNotWorkingError   503  upstream_not_working
    │   ├── OverloadedError           429  gateway_overloaded
    │   └── ShuttingDownError         503  shutting_down
    └── UpstreamError                 the upstream failed (502 unless noted); ``kind`` feeds metrics
        ├── UpstreamConnectError      connect
        ├── UpstreamTimeoutError      504  timeout (phase: connect, first_token, idle, total)
        ├── UpstreamStatusError       http_status (non-2xx)
        │   ├── UpstreamRateLimitedError  rate_limited (429/402, keeps Retry-After)
        │   │   └── AllRoutesRateLimitedError  429: every route tried answered 429
        │   ├── UpstreamBlockedError      blocked (Cloudflare page on 403)
        │   └── UpstreamAuthError         auth (401)
        ├── UpstreamProtocolError     protocol (HTML 200, nothing but garbage)
        └── UpstreamInterruptedError  interrupted (stream broke after it started)

aiohttp's exceptions are translated into these only in the FlowGpt client.
What an error means for the route and the request (a failure, retryable, worth a
failover) is decided in one place: :func:`gateway.outcome.classify`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Final, Literal, get_args

UpstreamErrorKind = Literal[
    "connect", "timeout", "http_status", "rate_limited", "blocked", "auth", "rejected", "protocol", "interrupted"
]
# Which deadline a timeout hit: connecting, waiting for the first token, silence between lines
# after it, or the request's total deadline.
TimeoutPhase = Literal["connect", "first_token", "idle", "total"]
# The kinds in declaration order, read from the Literal so the two cannot drift apart.
UPSTREAM_ERROR_KINDS: Final[tuple[UpstreamErrorKind, ...]] = get_args(UpstreamErrorKind)
RETRY_AFTER_MAX: Final = 86400.0  # a day; longer is noise


def retry_after_seconds(seconds: float) -> int:
    """The whole seconds a ``Retry-After`` header carries; any number of seconds in a message uses it too."""
    return max(1, math.ceil(min(seconds, RETRY_AFTER_MAX)))


class GatewayError(Exception):
    """Base of every error the gateway turns into an HTTP response or a stream error event."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.code: str = code or self._code()

    def _code(self) -> str:
        return self.default_code


class RequestError(GatewayError):
    """The request itself is wrong; the upstream is never contacted."""

    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class InvalidRequestError(RequestError):
    """Malformed JSON or a field that fails validation."""


class UnsupportedParameterError(RequestError):
    """A request field the gateway refuses by name (see gateway/fields.py)."""

    default_code = "unsupported_parameter"


class UnsupportedContentError(RequestError):
    """A message shape or content part FlowGpt cannot carry (see gateway/message_shapes.py)."""

    default_code = "unsupported_content"


class AuthenticationError(RequestError):
    """Missing or wrong gateway API key."""

    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class ForbiddenError(RequestError):
    """A token was presented but it is wrong."""

    status = 403
    error_type = "permission_error"
    default_code = "forbidden"


class NotFoundError(RequestError):
    """No such route."""

    status = 404
    default_code = "not_found"


class ModelNotFoundError(RequestError):
    """The model is neither a FlowGpt model nor an alias."""

    status = 404
    default_code = "model_not_found"


class PayloadTooLargeError(RequestError):
    """The request body exceeds the configured limit."""

    status = 413
    default_code = "request_too_large"


class RequestTimeoutError(RequestError):
    """The client took too long to send its body."""

    status = 408
    default_code = "request_timeout"


class AdmissionError(GatewayError):
    """Refused by the gateway to protect the upstream or itself."""

    status = 503
    error_type = "server_error"


class CircuitOpenError(AdmissionError):
    """The breaker is open (or half-open with its trial slots taken)."""

    default_code = "circuit_open"

    def __init__(self, message: str, *, retry_after: float, half_open: bool = False) -> None:
        super().__init__(message, retry_after=retry_after, code="half_open_busy" if half_open else None)
        self.half_open = half_open


class UpstreamNotWorkingError(AdmissionError):
    """The health probe (or an operator) marked the upstream as not working."""

    default_code = "upstream_not_working"


class OverloadedError(AdmissionError):
    """Too many concurrent upstream calls; the bounded queue wait expired."""

    status = 429
    error_type = "rate_limit_error"
    default_code = "gateway_overloaded"


class ShuttingDownError(AdmissionError):
    """The gateway is draining and accepts no new work."""

    default_code = "shutting_down"


class UpstreamError(GatewayError):
    """The upstream failed; ``kind`` is the metrics label."""

    status = 502
    error_type = "upstream_error"
    kind: UpstreamErrorKind = "http_status"
    # Set on a failure while a non-streamed answer was being read: its client has seen nothing yet,
    # so the call may be made again, like a failure before the first token.
    replayable: bool = False

    def _code(self) -> str:
        # The code mirrors the metrics kind, so a client's error and a dashboard agree.
        return f"upstream_{self.kind}"

    @property
    def cause(self) -> str:
        """The kind, told apart where one host's path may be to blame (see :mod:`gateway.scope`)."""
        return self.kind


class UpstreamConnectError(UpstreamError):
    """The TCP/TLS connection (or the proxy) could not be established."""

    kind = "connect"


class UpstreamTimeoutError(UpstreamError):
    """A deadline passed: connect, first token, idle between lines or total."""

    status = 504
    kind = "timeout"

    def __init__(self, message: str, *, phase: TimeoutPhase) -> None:
        super().__init__(message)
        self.phase = phase

    @property
    def cause(self) -> str:
        """A connect timeout is this host's path (a dropped SYN), not the upstream."""
        return "connect" if self.phase == "connect" else "timeout"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-2xx status."""

    kind: UpstreamErrorKind = "http_status"

    def __init__(self, message: str, *, upstream_status: int, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.upstream_status = upstream_status

    @property
    def cause(self) -> str:
        """Only a 5xx says the upstream itself fails; any other status may be one path's (a WAF's 403, a 407)."""
        if self.kind == "http_status":
            return "http_5xx" if self.upstream_status >= 500 else "http_other"
        return self.kind


class UpstreamRateLimitedError(UpstreamStatusError):
    """429 or 402 from the upstream; ``retry_after`` keeps its Retry-After."""

    kind = "rate_limited"


class AllRoutesRateLimitedError(UpstreamRateLimitedError):
    """Every route tried answered 429 and nothing else did: the client's answer is a 429, so SDKs back off."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float) -> None:
        seconds = retry_after_seconds(retry_after)
        super().__init__(f"{message}; retry in {seconds} s", upstream_status=429, retry_after=seconds)


class UpstreamBlockedError(UpstreamStatusError):
    """A Cloudflare challenge page instead of an answer."""

    kind = "blocked"


class UpstreamAuthError(UpstreamStatusError):
    """The upstream rejected our credentials (401)."""

    kind = "auth"


class UpstreamRejectedError(UpstreamStatusError):
    """The upstream refused this particular request (too large, invalid); passed to the caller as a 4xx."""

    kind = "rejected"
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message, upstream_status=upstream_status)
        self.status = upstream_status  # type: ignore[misc]  # 413 stays 413, 422 stays 422

    def _code(self) -> str:
        return "upstream_rejected_request"


class UpstreamProtocolError(UpstreamError):
    """The upstream said 200 but did not speak the protocol."""

    kind = "protocol"


class UpstreamInterruptedError(UpstreamError):
    """The stream broke after it had started."""

    kind = "interrupted"
