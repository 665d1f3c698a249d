"""Messages a newcomer can act on: plain --help, the settings named, JSON errors located, one exit code."""

from __future__ import annotations

import argparse

import aiohttp
import pytest
from pydantic import SecretStr, ValidationError

from gateway.cli import EXIT_BAD_SETTINGS, build_parser, main
from gateway.errors import UpstreamConnectError
from gateway.flowgpt.client import ChatPrompt, FlowGptClient
from gateway.flowgpt.protocol import ANONYMOUS_TOKEN, Message
from gateway.settings import Settings, describe_validation_error, env_name
from gateway.simulator import cli as sim_cli


def help_text(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``flowgpt-gateway *args --help`` prints."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--help"])
    return capsys.readouterr().out


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """--help shows plain sentences, no reStructuredText markup such as ``double backquotes``."""
    text = help_text(capsys=capsys)
    assert "``" not in text
    assert "serve (the gateway)" in " ".join(text.split())


def test_serve_help_lists_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """serve --help says where the settings are described and names every GATEWAY_* variable."""
    text = " ".join(help_text("serve", capsys=capsys).split())
    assert "README.md, section Settings" in text
    for field in Settings.model_fields:
        assert env_name(field) in text


@pytest.mark.parametrize("command", ["demo", "probe"])
def test_demo_and_probe_help_describe_the_command_and_the_settings(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """demo --help and probe --help open with a description and say where the GATEWAY_* variables are described."""
    text = " ".join(help_text(command, capsys=capsys).split())
    description = text.split("options:")[0].split("]")[-1].strip()
    assert len(description) > 40
    assert "README.md, section Settings" in text
    assert "GATEWAY_" in text


def test_malformed_upstreams_json_names_the_position() -> None:
    """A trailing comma in GATEWAY_UPSTREAMS: the message says line and column, not just 'must be a JSON list'."""
    with pytest.raises(ValidationError) as info:
        Settings(upstreams='[{"name": "a", "url": "http://127.0.0.1:9/x"},\n]')
    message = describe_validation_error(info.value)
    assert message.startswith("invalid setting GATEWAY_UPSTREAMS: its value is not valid JSON ")
    assert "(expecting value at line 2, column 1, character 47)" in message


def test_an_empty_upstream_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_UPSTREAM_TOKEN= (set, empty) is refused; unset stays the anonymous token."""
    monkeypatch.setenv("GATEWAY_UPSTREAM_TOKEN", "")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "GATEWAY_UPSTREAM_TOKEN: it is set but empty" in describe_validation_error(info.value)
    monkeypatch.delenv("GATEWAY_UPSTREAM_TOKEN")
    assert Settings().upstream_token.get_secret_value() == "null"


def test_a_check_across_settings_reads_as_a_sentence() -> None:
    """Two settings that conflict: 'invalid settings: set ... not both', not 'invalid setting set ...'."""
    with pytest.raises(ValidationError) as info:
        Settings(upstreams='[{"name": "a", "url": "http://127.0.0.1:9/x"}]', upstream_url="http://127.0.0.1:9/y")
    assert describe_validation_error(info.value).startswith("invalid settings: set GATEWAY_UPSTREAMS or ")


@pytest.mark.parametrize("command", ["serve", "demo", "probe", "sim"])
def test_bad_settings_exit_64_from_every_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """The same exit code for a bad setting whichever command reads it."""
    monkeypatch.setenv("GATEWAY_BREAKER_FAIL_MAX", "zero")
    if command == "sim":
        ns = argparse.Namespace(**vars(build_parser().parse_args(["sim", "--garbage-ratio", "3"])))
        assert sim_cli.run(ns) == EXIT_BAD_SETTINGS
    else:
        assert main([command]) == EXIT_BAD_SETTINGS
    assert capsys.readouterr().err


async def test_a_dns_failure_names_the_host() -> None:
    """An upstream host that does not resolve: the error says which host, and that it was DNS."""
    async with aiohttp.ClientSession() as session:
        client = FlowGptClient(
            session, url="http://no-such-host.invalid/v3/chat-anonymous", token=SecretStr(ANONYMOUS_TOKEN)
        )
        prompt = ChatPrompt("gpt-3.5-turbo", (Message(role="user", content="hi"),))
        with pytest.raises(UpstreamConnectError) as info:
            await client.open(prompt)
    assert "no-such-host.invalid" in info.value.message
    assert "DNS" in info.value.message
