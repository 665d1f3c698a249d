"""Routes: the ways to reach FlowGpt (``GATEWAY_UPSTREAMS``), each with its own URL, token, proxy and weight."""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictFloat, StrictInt, ValidationError, field_validator
from yarl import URL

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, DEFAULT_UPSTREAM_URL
from gateway.scope import EGRESS_PATTERN

DEFAULT_ROUTE: Final = "default"  # the one route made from GATEWAY_UPSTREAM_URL/_TOKEN/_PROXY
ROUTE_NAME_PATTERN: Final = r"^[a-z0-9_-]{1,32}$"
MAX_ROUTES: Final = 64  # every route costs a prober, a breaker and labelled series
_NAME: Final = re.compile(ROUTE_NAME_PATTERN)


class RouteSpec(BaseModel):
    """One route as configured; ``token`` and ``proxy`` are secrets and never shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ROUTE_NAME_PATTERN)
    url: str = DEFAULT_UPSTREAM_URL
    token: SecretStr = SecretStr(ANONYMOUS_TOKEN)
    proxy: SecretStr | None = None
    weight: StrictInt | StrictFloat = Field(1.0, gt=0, le=1000)  # strict: true is not a weight
    # The egress group this route leaves through (see gateway.scope); unset: GATEWAY_EGRESS.
    egress: str | None = Field(None, pattern=EGRESS_PATTERN)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        check_http_url(value)
        check_no_user_info(value)
        return value

    @field_validator("proxy")
    @classmethod
    def _http_proxy(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_http_url(value.get_secret_value())
        return value

    @property
    def proxy_url(self) -> str | None:
        """The proxy as aiohttp wants it."""
        return None if self.proxy is None else self.proxy.get_secret_value()


def check_http_url(value: str) -> None:
    """Raise ``ValueError`` unless ``value`` is an http(s) URL with a host; the message never repeats it."""
    try:
        url = URL(value)
    except (TypeError, ValueError):
        raise ValueError("must be an http:// or https:// URL") from None
    if url.scheme not in ("http", "https") or not url.host or " " in value:
        raise ValueError("must be an http:// or https:// URL with a host")


def check_no_user_info(value: str) -> None:
    """Raise ``ValueError`` for ``user:password@`` in an upstream URL (the client sends its own Authorization)."""
    url = URL(value)
    if url.user is not None or url.password is not None:
        raise ValueError("must not carry user:password@ (the token goes in 'token', proxy credentials in 'proxy')")


def parse_routes(value: Any) -> tuple[RouteSpec, ...]:
    """``GATEWAY_UPSTREAMS`` (a JSON list, or already a sequence) as validated routes.

    Raises ``ValueError`` with one line naming the route at fault and never its secrets.
    """
    if value == () or (isinstance(value, str) and not value.strip()):
        return ()  # unset (the field's default, or an empty variable)
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError("must be a JSON list of routes") from None
    if isinstance(value, RouteSpec):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a JSON list of routes")
    if not value:
        raise ValueError("must list at least one route (or be unset for the GATEWAY_UPSTREAM_* route)")
    if len(value) > MAX_ROUTES:
        raise ValueError(f"at most {MAX_ROUTES} routes")
    routes: list[RouteSpec] = []
    for index, item in enumerate(value):
        if isinstance(item, RouteSpec):
            routes.append(item)
            continue
        name = item.get("name") if isinstance(item, dict) else None
        # Only a valid name is echoed: anything else might be a misplaced secret.
        label = f"route {name!r}" if isinstance(name, str) and _NAME.fullmatch(name) else f"route #{index + 1}"
        try:
            routes.append(RouteSpec.model_validate(item))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            raise ValueError(f"{label}: {where + ': ' if where else ''}{message}") from None
    names = [route.name for route in routes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"route {duplicates[0]!r}: names must be unique")
    return tuple(routes)
