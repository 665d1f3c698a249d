"""Make aioresponses 0.7.9 work on aiohttp 3.14 (pnuckowski/aioresponses#289), tests only.

aiohttp 3.14 added a required ``stream_writer`` argument to ``ClientResponse``
and aioresponses builds its stream reader with a 64 KiB limit; both are patched
here rather than pinning aiohttp below a security release.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any
from unittest.mock import Mock

import aiohttp
import aioresponses.core
import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.streams import StreamReader

_NEEDS_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters


class CompatClientResponse(aiohttp.ClientResponse):
    """A ClientResponse that supplies the ``stream_writer`` aiohttp >= 3.14 requires."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _NEEDS_WRITER and "stream_writer" not in kwargs:
            kwargs["stream_writer"] = Mock(output_size=0)
        super().__init__(*args, **kwargs)


def _stream_reader_factory(loop: asyncio.AbstractEventLoop | None = None) -> StreamReader:
    protocol: BaseProtocol = ResponseHandler(loop=loop or asyncio.get_event_loop())
    return StreamReader(protocol, limit=2**30, loop=loop or asyncio.get_event_loop())


@pytest.fixture(name="mock_upstream")
def mock_upstream_fixture(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An aioresponses instance that works on this aiohttp."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", CompatClientResponse)
    monkeypatch.setattr(aioresponses.core, "stream_reader_factory", _stream_reader_factory)
    with aioresponses.aioresponses() as mocked:
        yield mocked
