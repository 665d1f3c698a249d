"""Settings: env prefix, comma-separated keys, secrets masked, one clear line on bad input."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.settings import Settings, describe_validation_error


def test_defaults_point_at_the_real_flowgpt() -> None:
    """The production default upstream is FlowGpt's, anonymous ("Bearer null")."""
    settings = Settings()
    assert settings.upstream_url == "https://prod-backend-k8s.flowgpt.com/v3/chat-anonymous"
    assert settings.upstream_token.get_secret_value() == "null"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_* variables configure the gateway; API keys are comma-separated."""
    monkeypatch.setenv("GATEWAY_PORT", "9000")
    monkeypatch.setenv("GATEWAY_API_KEYS", "a, b,,c")
    monkeypatch.setenv("GATEWAY_TIMEOUT_TOTAL", "12.5")
    settings = Settings()
    assert settings.port == 9000
    assert [key.get_secret_value() for key in settings.api_keys] == ["a", "b", "c"]
    assert settings.timeout_total == 12.5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_PORT", "eighty"),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_LOG_FORMAT", "xml"),
        ("GATEWAY_UPSTREAM_URL", "ftp://x"),
        ("GATEWAY_TIMEOUT_IDLE", "0"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """A bad value fails with one line that names the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    line = describe_validation_error(info.value)
    assert variable in line
    assert "\n" not in line


def test_masked_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """masked() never shows a token or key."""
    monkeypatch.setenv("GATEWAY_UPSTREAM_TOKEN", "tok-secret")
    monkeypatch.setenv("GATEWAY_API_KEYS", "key-secret")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "adm-secret")
    shown = repr(Settings().masked())
    for secret in ("tok-secret", "key-secret", "adm-secret"):
        assert secret not in shown


@pytest.mark.parametrize(
    "settings",
    [
        {"upstream_url": "https://user:pass@flowgpt.example/v3/chat-anonymous"},
        {"upstreams": '[{"name": "a", "url": "https://user:pass@flowgpt.example/v3/chat-anonymous"}]'},
    ],
    ids=["upstream_url", "route_url"],
)
def test_user_info_in_an_upstream_url_is_refused_without_echoing_it(settings: dict[str, Any]) -> None:
    """aiohttp refuses user:pass@ next to the bearer header on every call: refused at start-up, secret unshown."""
    with pytest.raises(ValidationError) as caught:
        Settings(**settings)
    line = describe_validation_error(caught.value)
    assert "must not carry user:password@" in line
    assert "pass@" not in line
