"""Structured logging with the request id on every line of a request.

The id lives in a context variable: aiohttp runs each request in its own task,
so everything logged while serving it (the client, the breaker, retries) carries
it without passing it around.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable
from typing import Final, Literal

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys() | {"message", "asctime", "request_id"}
)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (or ``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """``time level logger request_id=... message key=value...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra(record)
        if extra:
            line += " " + " ".join(f"{key}={value}" for key, value in extra.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            # The text ScrubSecrets left (it formats and scrubs the traceback once); never a fresh, raw one.
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _extra(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRS}


class DemoteClientFaults(logging.Filter):
    """aiohttp logs a malformed request at ERROR with a traceback quoting its bytes; it is the
    client's fault and already answered 4xx, so it becomes one INFO line without the quote."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError | web.RequestPayloadError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "malformed request from client: %s", (type(error).__name__,)
            record.exc_info, record.exc_text = None, None
        return True


class ScrubSecrets(logging.Filter):
    """A second net behind the client's own scrubbing: no configured secret reaches a log line."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._scrub(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._scrub(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        for key, value in _extra(record).items():  # fields given with extra=...: both formats print them
            if not isinstance(value, int | float | bool | None):
                setattr(record, key, self._scrub(str(value)))
        return True


def configure_logging(fmt: Literal["text", "json"], level: str, scrub: Callable[[str], str] | None = None) -> None:
    """Install one stderr handler on the root logger (idempotent); ``scrub`` cleans every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    if scrub is not None:
        handler.addFilter(ScrubSecrets(scrub))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Our own middleware logs each request once; aiohttp's access log would repeat it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, DemoteClientFaults) for f in server_log.filters):
        server_log.addFilter(DemoteClientFaults())
