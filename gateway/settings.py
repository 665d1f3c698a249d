"""All settings in one validated class; read from ``GATEWAY_*`` variables, overridable by CLI flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from yarl import URL

from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, DEFAULT_MODEL, DEFAULT_UPSTREAM_URL
from gateway.redact import Scrubber, mask_url
from gateway.route_config import DEFAULT_ROUTE, RouteSpec, check_http_url, check_no_user_info, parse_routes
from gateway.scope import EGRESS_PATTERN

ENV_PREFIX: Final = "GATEWAY_"

Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Every knob of the gateway. Durations are seconds (floats allowed)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    admin_token: SecretStr | None = None
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_header_bytes: int = Field(8190, ge=1024, le=1024 * 1024)
    client_read_timeout: Seconds = 30.0
    # Idle keep-alive connections, and clients that have not finished their request headers
    # (slowloris), are closed after this long; aiohttp's AppRunner default is an hour.
    keepalive_timeout: Seconds = 75.0
    shutdown_timeout: float = Field(20.0, ge=0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # One line per request costs ~10 us of a ~350 us request and a fifth of a breaker refusal;
    # metrics already count every request, so by default only failures (500, 502, 504) get a
    # line (Envoy logs nothing per request unless told to).
    access_log: Literal["all", "errors", "off"] = "errors"
    uvloop: bool = True

    # Upstream
    upstream_url: str = DEFAULT_UPSTREAM_URL
    upstream_token: SecretStr = SecretStr(ANONYMOUS_TOKEN)
    upstream_proxy: str | None = None
    upstream_max_line_bytes: int = Field(1024 * 1024, ge=1024)
    # Several ways to reach FlowGpt (JSON list); unset: one route "default" from the three above.
    upstreams: Annotated[tuple[RouteSpec, ...], NoDecode] = ()
    # Refused request fields (gateway/fields.py) are dropped instead, as LiteLLM's drop_params does.
    drop_params: bool = False

    # Fleet: processes on one host (workers) and replicas share upstream health through Redis.
    redis_url: SecretStr | None = None  # unset: every process decides alone
    redis_prefix: str = Field("flowgpt-gateway", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_timeout: float = Field(0.1, gt=0, le=5)
    workers: int = Field(1, ge=1, le=64)
    # Hosts behind one NAT or proxy set the same value: they share failures that may belong to one
    # path (blocks, rate limits, connect errors, auth); unset, those stay per process (gateway.scope).
    egress: str | None = Field(None, pattern=EGRESS_PATTERN)

    # Resilience
    breaker_fail_max: int = Field(5, ge=1)
    breaker_reset_seconds: Seconds = 30.0
    breaker_reset_multiplier: float = Field(1.0, ge=1.0)
    breaker_reset_max_seconds: Seconds = 300.0
    breaker_half_open_calls: int = Field(1, ge=1)
    timeout_connect: Seconds = 10.0
    timeout_first_token: Seconds = 30.0
    timeout_idle: Seconds = 30.0
    timeout_total: Seconds = 300.0
    # One write to a client that has stopped reading; also bounded by timeout_total.
    timeout_client_write: Seconds = 30.0
    retry_max: int = Field(2, ge=0, le=10)
    retry_backoff_base: Seconds = 0.1
    retry_backoff_max: Seconds = 2.0
    retry_budget_ratio: float = Field(0.2, ge=0.0, le=1.0)
    # Per 10 s whatever the traffic. Above the breaker's fail_max, so that at low traffic a failing
    # route's callers are failed over to another route until its breaker opens.
    retry_budget_min: int = Field(10, ge=0)
    max_concurrency: int = Field(64, ge=1)
    queue_timeout: float = Field(0.1, ge=0.0)

    # Health probe
    probe_enabled: bool = True
    probe_interval: Seconds = 30.0
    probe_unhealthy_interval: Seconds = 5.0
    # The probe is held to the live standard: unset means timeout_first_token, and less is refused.
    probe_timeout: Seconds | None = None
    probe_healthy_threshold: int = Field(1, ge=1)
    probe_unhealthy_threshold: int = Field(2, ge=1)
    probe_model: str = DEFAULT_MODEL
    probe_prompt: str = "ping"
    # Start-up: /readyz says 503 "not yet probed" until a route has answered a probe, at most this long.
    ready_grace: Seconds = 10.0

    # Status page at / (issue 14): on, off (404), or admin (needs GATEWAY_ADMIN_TOKEN as its password).
    ui: Literal["on", "off", "admin"] = "on"
    ui_refresh_seconds: float = Field(5.0, ge=0.1, le=300)  # how often the open page asks for fresh data
    # Traces: an OTLP/HTTP collector (base URL or its /v1/traces URL); unset: no tracing at all.
    otlp_endpoint: str | None = None
    otlp_propagate_upstream: bool = False  # send traceparent to FlowGpt (a third party): off by default
    ui_sample_seconds: float = Field(5.0, ge=0.05, le=60)  # the sparklines' step; their ring is fixed-size
    # GET /runbook serves this Markdown file as HTML (alerts link to its headings); unset: the
    # checkout's docs/runbook.md when the gateway runs from one.
    runbook_path: Path | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("upstreams", mode="before")
    @classmethod
    def _parse_routes(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip():
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                # Where, not what: the text may hold tokens and proxy credentials.
                what = exc.msg[:1].lower() + exc.msg[1:]  # "Expecting value" -> "expecting value"
                raise ValueError(
                    f"its value is not valid JSON ({what} at line {exc.lineno}, column {exc.colno}, "
                    f"character {exc.pos})"
                ) from None
        return parse_routes(value)

    @field_validator("upstream_token", mode="before")
    @classmethod
    def _token_not_empty(cls, value: Any) -> Any:
        # Unset means the anonymous token; set but empty is a mistake (a template not filled in).
        if value == "":
            raise ValueError("it is set but empty: unset it for the anonymous token, or give the token")
        return value

    @field_validator("upstream_url", "upstream_proxy")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_http_url(value)  # the message never repeats the value: a proxy URL carries credentials
            if info.field_name == "upstream_url":
                check_no_user_info(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("GATEWAY_REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @field_validator("upstream_proxy", "admin_token", "redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.breaker_reset_max_seconds < self.breaker_reset_seconds:
            raise ValueError("GATEWAY_BREAKER_RESET_MAX_SECONDS must be >= GATEWAY_BREAKER_RESET_SECONDS")
        if self.retry_backoff_max < self.retry_backoff_base:
            raise ValueError("GATEWAY_RETRY_BACKOFF_MAX must be >= GATEWAY_RETRY_BACKOFF_BASE")
        single_route = self.model_fields_set & {"upstream_url", "upstream_token", "upstream_proxy"}
        if self.upstreams and single_route:
            names = "/".join(sorted(env_name(name) for name in single_route))
            raise ValueError(f"set GATEWAY_UPSTREAMS or {names}, not both (the routes replace the single upstream)")
        if self.workers > 1 and self.redis_url is None:
            raise ValueError(
                "GATEWAY_WORKERS > 1 needs GATEWAY_REDIS_URL (workers agree on trips and probes through Redis)"
            )
        if self.probe_timeout is None:
            object.__setattr__(self, "probe_timeout", self.timeout_first_token)  # frozen: set once, here
        elif self.probe_timeout < self.timeout_first_token:
            raise ValueError(
                "GATEWAY_PROBE_TIMEOUT must be >= GATEWAY_TIMEOUT_FIRST_TOKEN"
                " (a probe held to a stricter limit than live traffic declares a slow upstream dead)"
            )
        return self

    @model_validator(mode="after")
    def _ui_needs_token(self) -> Settings:
        if self.ui == "admin" and self.admin_token is None:
            raise ValueError("GATEWAY_UI=admin needs GATEWAY_ADMIN_TOKEN (the status page's password)")
        return self

    @property
    def probe_deadline(self) -> float:
        """The probe's limit in seconds (``probe_timeout``, which defaults to the first-token limit)."""
        return self.probe_timeout if self.probe_timeout is not None else self.timeout_first_token

    def routes(self) -> tuple[RouteSpec, ...]:
        """The configured routes, or the single ``default`` route of the ``GATEWAY_UPSTREAM_*`` settings."""
        if self.upstreams:
            return self.upstreams
        proxy = None if self.upstream_proxy is None else SecretStr(self.upstream_proxy)
        return (RouteSpec(name=DEFAULT_ROUTE, url=self.upstream_url, token=self.upstream_token, proxy=proxy),)

    def secrets(self) -> tuple[str, ...]:
        """Every configured secret value (keys, tokens, credentials in URLs), for scrubbing free text."""
        values = [key.get_secret_value() for key in self.api_keys]
        if self.admin_token is not None:
            values.append(self.admin_token.get_secret_value())
        urls = [spec.url for spec in self.routes()] + [spec.proxy_url for spec in self.routes() if spec.proxy_url]
        if self.redis_url is not None:
            urls.append(self.redis_url.get_secret_value())
        for spec in self.routes():
            if spec.token.get_secret_value() != ANONYMOUS_TOKEN:  # public: everyone sends "null"
                values.append(spec.token.get_secret_value())
        for raw in urls:
            url = URL(raw)
            if url.user or url.password or url.query_string:
                values.append(raw)
            values.extend(part for part in (url.user, url.password, url.raw_user, url.raw_password) if part)
            values.extend(value for value in url.query.values() if value)
            if url.user is not None and url.password is not None:
                values.append(f"{url.user}:{url.password}")  # what Basic auth (Proxy-Authorization) encodes
        return tuple(values)

    def scrubber(self) -> Scrubber:
        """What must never be shown, even quoted by an upstream: every secret above and the probe prompt."""
        return Scrubber([*self.secrets(), self.probe_prompt])

    def masked(self) -> dict[str, Any]:
        """Settings for display: secrets shown only as set or unset."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***"
            elif name == "api_keys":
                value = f"{len(value)} configured"
            elif name in ("admin_token", "redis_url"):
                value = "unset" if value is None else "***"
            elif name in ("upstream_url", "upstream_proxy") and value is not None:
                value = mask_url(value)
            elif name == "upstreams":
                value = [describe_route(route) for route in value]
            shown[name] = value
        return shown


def describe_route(route: RouteSpec) -> dict[str, Any]:
    """A route for display: the URL and proxy masked (user info and query values), the token as ``***``."""
    return {
        "name": route.name,
        "url": mask_url(route.url),
        "token": "***",
        "proxy": None if route.proxy_url is None else mask_url(route.proxy_url),
        "weight": route.weight,
    }


def env_name(field: str) -> str:
    """The environment variable behind a settings field."""
    return ENV_PREFIX + field.upper()


def describe_validation_error(error: ValidationError) -> str:
    """One sentence naming the variable(s) at fault, for start-up failures."""
    parts = []
    for item in error.errors():
        where = ".".join(str(piece) for piece in item["loc"] if isinstance(piece, str))
        message = item["msg"].removeprefix("Value error, ")
        # A check across fields names its variables in its message already.
        parts.append(f"{env_name(where)}: {message}" if where else message)
    only = error.errors()[0] if len(parts) == 1 else None
    if only is not None and any(isinstance(piece, str) for piece in only["loc"]):
        return "invalid setting " + parts[0]  # "invalid setting GATEWAY_PORT: ..."
    return "invalid settings: " + "; ".join(parts)  # "invalid settings: set GATEWAY_UPSTREAMS or ..., not both"
