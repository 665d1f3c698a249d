"""Request id, access log and metrics, API-key auth, and errors as OpenAI-shaped JSON."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import web
from opentelemetry.trace import Span, Status, StatusCode

from gateway import overhead
from gateway.app_keys import API_KEYS, DROPPED_PARAMS, METRICS, REQUEST_ID, SETTINGS, STATUS_OVERRIDE, TRACING
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    retry_after_seconds,
)
from gateway.ids import hex_id
from gateway.logs import request_id_var
from gateway.openai_schema import error_body
from gateway.overhead import Stopwatch
from gateway.tracing import Tracing

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger("gateway.access")

_REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE: Final = "unmatched"
# nginx's convention for "the client closed the connection before the answer was complete".
CLIENT_CLOSED_REQUEST: Final = 499
# Deliberate refusals (breaker open, not working, draining) come by the thousand during an outage;
# they are counted by reason in metrics, so the "errors" access log leaves them out.
_REFUSALS: Final = frozenset({503})


def route_template(request: web.Request) -> str:
    """The route's template for labels (never the raw path, which clients control)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: request id, one access-log line and the HTTP metrics for every request, in a server span."""
    tracing = request.app.get(TRACING)
    if tracing is None or not tracing.enabled:
        return await _observed(request, handler, None)
    route = route_template(request)
    with tracing.server_span(f"{request.method} {route}", request.headers) as span:
        span.set_attribute("http.request.method", request.method)
        span.set_attribute("http.route", route)  # the template, never the raw path a client chose
        return await _observed(request, handler, span)


async def _observed(request: web.Request, handler: Handler, span: Span | None) -> web.StreamResponse:
    # One coroutine for all of it (every request runs it): the stopwatch's start is the request's.
    stopwatch = Stopwatch()
    watch = overhead.CURRENT.set(stopwatch)
    incoming = request.headers.get("X-Request-ID")
    request_id = incoming if incoming and _REQUEST_ID_PATTERN.fullmatch(incoming) else hex_id(16)
    request[REQUEST_ID] = request_id
    token = request_id_var.set(request_id)
    status = 500
    try:
        response = await handler(request)
        status = request.get(STATUS_OVERRIDE, response.status)
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        elapsed = time.perf_counter() - stopwatch.started
        route = route_template(request)
        app = request.app
        trace_id = None
        if span is not None:
            span.set_attribute("gateway.request_id", request_id)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            trace_id = Tracing.trace_id()
        try:
            metrics = app[METRICS]
            metrics.observe_http(route, request.method, status, elapsed, request_id, trace_id)
            if stopwatch.route is not None:  # a chat request that an upstream route answered
                metrics.observe_overhead(stopwatch.route, stopwatch.overhead())
        except Exception:  # metrics must never turn an answered request into a failure
            log.exception("recording request metrics failed")
        access_log = app[SETTINGS].access_log
        if access_log == "all" or (access_log == "errors" and status >= 500 and status not in _REFUSALS):
            log.info(
                "request method=%s route=%s status=%d duration_ms=%.2f",
                request.method,
                route,
                status,
                elapsed * 1000,
            )
        request_id_var.reset(token)
        overhead.CURRENT.reset(watch)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: echo the id on every response, streams included, and name any dropped fields."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    dropped = request.get(DROPPED_PARAMS)
    if dropped is not None:
        response.headers["x-gateway-dropped-params"] = dropped


def error_response(error: GatewayError) -> web.Response:
    """The single place where an error becomes an HTTP response."""
    response = web.Response(body=orjson.dumps(error_body(error)), status=error.status, content_type="application/json")
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(retry_after_seconds(error.retry_after))
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into OpenAI-shaped JSON; never leak a traceback."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return error_response(PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes"))
    except web.RequestPayloadError:
        # A body the HTTP layer cannot decode (bad Content-Encoding, broken chunked framing) is the
        # client's fault, not ours; the connection's framing is unknown now, so it is not reused.
        response = error_response(
            InvalidRequestError("request body could not be decoded (check Content-Encoding and chunked framing)")
        )
        response.force_close()
        return response
    except web.HTTPNotFound:
        return error_response(NotFoundError(f"no route for {request.method} {request.path[:200]}"))
    except web.HTTPMethodNotAllowed as exc:
        response = error_response(
            InvalidRequestError(f"method {request.method} is not allowed here", code="method_not_allowed")
        )
        response.set_status(405)
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error")
        return error_response(GatewayError("internal error; see the gateway log for this request id"))


def middlewares_for(api_keys: tuple[bytes, ...]) -> list[Middleware]:
    """The gateway's middlewares, outermost first. Without keys the key check is left out: it would
    pass every request, and a layer costs every request a coroutine (about 4 µs, docs/benchmark.md)."""
    return [observe, errors, api_key_auth] if api_keys else [observe, errors]


@web.middleware
async def api_key_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """When keys are configured, ``/v1/*`` needs ``Authorization: Bearer <key>``; ops endpoints stay open."""
    keys = request.app[API_KEYS]
    if keys and request.path.startswith("/v1/"):
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not _key_matches(presented.strip().encode(), keys):
            raise AuthenticationError("missing or invalid API key (send Authorization: Bearer <key>)")
    return await handler(request)


def _key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key (no early exit that leaks which one matched)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found
