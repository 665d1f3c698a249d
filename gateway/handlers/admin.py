"""Operator controls: pin the breaker or the working flag, guarded by ``GATEWAY_ADMIN_TOKEN``.

Without a configured token the endpoints do not exist (404), so an unconfigured
deployment exposes no control surface at all.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import AuthenticationError, GatewayError, InvalidRequestError, NotFoundError
from gateway.health import WorkingMode
from gateway.state import BREAKER, HEALTH, SETTINGS

_BREAKER_MODES = ("open", "closed", "auto")
_WORKING_MODES: tuple[WorkingMode, ...] = ("working", "not_working", "auto")


class ForbiddenError(GatewayError):
    """A token was presented but it is wrong."""

    status = 403
    error_type = "permission_error"
    default_code = "forbidden"


def _authorize(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    if token is None:
        raise NotFoundError(f"no route for {request.method} {request.path[:200]}")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise AuthenticationError("admin endpoints need Authorization: Bearer <GATEWAY_ADMIN_TOKEN>")
    if not hmac.compare_digest(presented.strip().encode(), token.get_secret_value().encode()):
        raise ForbiddenError("wrong admin token")


async def _mode(request: web.Request, allowed: tuple[str, ...]) -> str:
    try:
        body: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidRequestError('body must be JSON like {"mode": "auto"}', code="invalid_json") from None
    mode = body.get("mode") if isinstance(body, dict) else None
    if mode not in allowed:
        raise InvalidRequestError(f"'mode' must be one of {', '.join(allowed)}", param="mode")
    return str(mode)


def _state(request: web.Request) -> dict[str, Any]:
    return {"breaker": request.app[BREAKER].snapshot(), "health": request.app[HEALTH].snapshot()}


async def get_admin_state(request: web.Request) -> web.Response:
    """Breaker and working flag as the gateway sees them."""
    _authorize(request)
    return web.json_response(_state(request))


async def set_breaker_mode(request: web.Request) -> web.Response:
    """``{"mode": "open" | "closed" | "auto"}``: force the breaker or hand it back."""
    _authorize(request)
    mode = await _mode(request, _BREAKER_MODES)
    breaker = request.app[BREAKER]
    {"open": breaker.force_open, "closed": breaker.force_closed, "auto": breaker.automatic}[mode]()
    return web.json_response(_state(request))


async def set_working_mode(request: web.Request) -> web.Response:
    """``{"mode": "working" | "not_working" | "auto"}``: pin the working flag for maintenance."""
    _authorize(request)
    mode = await _mode(request, _WORKING_MODES)
    request.app[HEALTH].set_mode(mode)  # type: ignore[arg-type]
    return web.json_response(_state(request))
