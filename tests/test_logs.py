"""Structured logs: the request id on every line of a request, text and JSON formats."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from gateway.app_keys import INFLIGHT
from gateway.logs import JsonFormatter, RequestIdFilter, ScrubSecrets, TextFormatter, request_id_var
from gateway.redact import Scrubber
from gateway.simulator import SimFaults, Simulator
from tests.gateway_support import GatewayFactory, chat_body


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    RequestIdFilter().filter(record)
    return record


def test_formats_carry_the_request_id_and_extras() -> None:
    """Both formats show the current request id and any structured extras."""
    token = request_id_var.set("rid-7")
    try:
        record = _record("upstream slow", attempt=2)
    finally:
        request_id_var.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["request_id"], entry["message"], entry["attempt"], entry["level"]) == (
        "rid-7",
        "upstream slow",
        2,
        "WARNING",
    )
    text = TextFormatter().format(record)
    assert "request_id=rid-7" in text
    assert text.endswith("upstream slow attempt=2")


def test_outside_a_request_the_id_is_a_dash() -> None:
    """Background work (the probe) logs with request_id=-."""
    assert json.loads(JsonFormatter().format(_record("probe")))["request_id"] == "-"


async def test_every_line_of_a_request_carries_its_id(
    make_gateway: GatewayFactory, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Access log, client warnings and error lines of one request all carry that request's id."""
    caplog.handler.addFilter(RequestIdFilter())
    gateway = await make_gateway(retry_max=0, access_log="all")
    sim.faults = SimFaults(garbage_ratio=1.0)
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        response = await gateway.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "req-42"})
        assert response.status == 200
    lines = [r for r in caplog.records if r.name.startswith("gateway.") and not r.name.startswith("gateway.simulator")]
    assert {r.name for r in lines} >= {"gateway.access", "gateway.flowgpt.client"}
    assert {getattr(r, "request_id", None) for r in lines} == {"req-42"}


async def test_access_log_levels(
    make_gateway: GatewayFactory, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """GATEWAY_ACCESS_LOG=errors logs only failures (not client errors or refusals); off none; all every one."""
    expected = {"all": ["200", "404", "503", "502"], "errors": ["502"], "off": []}
    for mode, statuses in expected.items():
        gateway = await make_gateway(access_log=mode, retry_max=0, breaker_fail_max=1)
        sim.faults = SimFaults(http_status=500)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gateway.access"):
            await gateway.get("/healthz")
            await gateway.get("/nowhere")
            gateway.app[INFLIGHT].draining = True
            await gateway.post("/v1/chat/completions", json=chat_body())
            gateway.app[INFLIGHT].draining = False
            await gateway.post("/v1/chat/completions", json=chat_body())
        logged = [r.getMessage().split("status=")[1].split()[0] for r in caplog.records if r.name == "gateway.access"]
        assert logged == statuses, mode


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_no_secret_reaches_a_line_through_a_traceback_an_extra_or_a_stack(formatter: logging.Formatter) -> None:
    """The scrubbing filter covers the exception text, structured extras and stack info, in both formats.

    Found by review: the JSON format formatted the traceback afresh (skipping the scrubbed text) and
    neither format scrubbed extras, so a Redis URL with its password reached JSON log lines.
    """
    url = "redis://:hunter2-redis-pass@db:6379/0"
    try:
        raise ValueError(f"bad url {url}")
    except ValueError:
        record = logging.LogRecord("gateway.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    record.__dict__.update(url=url, attempt=2)
    record.stack_info = f"Stack (most recent call last):\n  connect({url!r})"
    RequestIdFilter().filter(record)
    ScrubSecrets(Scrubber(["hunter2-redis-pass"])).filter(record)
    line = formatter.format(record) + formatter.formatStack(record.stack_info)
    assert "hunter2" not in line
    assert "bad url redis://:***@db" in line  # the traceback is there, masked
    assert "attempt" in line  # numbers pass as they are
