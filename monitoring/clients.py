"""HTTP clients for the pieces of a running stack: the simulator's control API, the gateway, Prometheus.

Each is a thin view over the stack's one ``aiohttp.ClientSession`` and a base URL;
``check`` (the stack's ``ensure_running``) is called while polling, so a wait ends
at once with the process's output when a child has died.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.openai_schema import chat_request_body
from monitoring.configs import JOB
from monitoring.processes import StackError, wait_until


@dataclass(frozen=True)
class PromAlert:
    """An active alert as Prometheus reports it (``pending`` or ``firing``)."""

    alertname: str
    state: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class ChatResult:
    """What the gateway answered to one chat request."""

    status: int
    code: str | None  # the OpenAI-style error code, None on success


@dataclass(frozen=True)
class Series:
    """One series of a Prometheus query result: labels and (time, value) samples."""

    labels: Mapping[str, str]
    values: tuple[tuple[float, float], ...]

    def has_finite_value(self) -> bool:
        """True if any sample is a number (not NaN or infinite)."""
        return any(math.isfinite(value) for _, value in self.values)



class SimulatorControl:
    """The simulator's ``/_sim`` API: faults per route."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def set_faults(self, faults: Mapping[str, object], *, route: str | None = None) -> None:
        """Replace the simulator's faults (``POST /_sim/faults``) of ``route`` (default: the plain path)."""
        params = {} if route is None else {"route": route}
        async with self.session.post(f"{self.base_url}/_sim/faults", json=faults, params=params) as response:
            if response.status != 200:
                raise StackError(f"simulator refused faults {faults}: {response.status} {await response.text()}")

    async def heal(self, *, route: str | None = None) -> None:
        """Clear the simulator's faults (``DELETE /_sim/faults``) of ``route`` (default: the plain path)."""
        params = {} if route is None else {"route": route}
        async with self.session.delete(f"{self.base_url}/_sim/faults", params=params) as response:
            if response.status != 200:
                raise StackError(f"simulator did not heal: {response.status} {await response.text()}")


class GatewayClient:
    """The gateway's chat, readiness and metrics endpoints, and waits on its breaker and working flag."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, check: Callable[[], None]) -> None:
        self.session = session
        self.base_url = base_url
        self._check = check

    async def chat(self, content: str = "Hello", *, stream: bool = False) -> ChatResult:
        """One chat completion through the gateway, read to the end."""
        body = chat_request_body(content, stream=stream)
        async with self.session.post(f"{self.base_url}/v1/chat/completions", json=body) as response:
            text = await response.text()
        code: str | None = None
        if response.status != 200:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                code = json.loads(text)["error"]["code"]
        return ChatResult(response.status, code)

    async def trip_breaker(
        self, *, within: float = 20.0, on_chat: Callable[[ChatResult, str], None] | None = None
    ) -> None:
        """Send chat requests until the gateway's breaker leaves ``closed`` (the upstream must be broken).

        Health probes never trip the breaker (they bypass it), so this needs live
        traffic before the probes turn the working flag off; ``on_chat`` sees each
        answer and the breaker state after it.
        """

        async def tripped() -> bool:
            self._check()
            result = await self.chat("Hello")
            _, body = await self.readiness()
            state = str(body["routes"][0]["breaker"]["state"])
            if on_chat is not None:
                on_chat(result, state)
            if state == "closed" and not body["working"]:
                raise StackError(
                    "the working flag went off before chat traffic tripped the breaker "
                    "(raise GATEWAY_PROBE_UNHEALTHY_THRESHOLD or lower GATEWAY_BREAKER_FAIL_MAX)"
                )
            return state != "closed"

        await wait_until(tripped, within=within, what="the circuit breaker to open", interval=0.2)

    async def wait_working(self, working: bool, *, within: float = 20.0) -> None:
        """Wait until the gateway's working flag is ``working`` (and, when working, the breaker closed).

        A probe success only half-opens the breaker; as in production, live traffic closes
        it, so while half-open this sends one chat request (the trial).
        """

        async def reached() -> bool:
            self._check()
            status, body = await self.readiness()
            if working:
                if status == 200 and body["working"] and body["routes"][0]["breaker"]["state"] == "half_open":
                    await self.chat("trial")
                    status, body = await self.readiness()
                return status == 200 and bool(body["working"]) and body["routes"][0]["breaker"]["state"] == "closed"
            return status == 503 and not body["working"]

        what = "the health probe to mark the upstream " + ("working" if working else "not working")
        await wait_until(reached, within=within, what=what, interval=0.1)

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """The gateway's ``/readyz`` status and JSON (working flag, breaker, last probe)."""
        async with self.session.get(f"{self.base_url}/readyz") as response:
            body: dict[str, Any] = await response.json()
            return response.status, body

    async def metrics(self) -> str:
        """The gateway's ``/metrics`` exposition (text format)."""
        async with self.session.get(f"{self.base_url}/metrics") as response:
            response.raise_for_status()
            return await response.text()


class PrometheusClient:
    """Prometheus's HTTP API: instant and range queries, alerts, and waiting for a scrape."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, check: Callable[[], None]) -> None:
        self.session = session
        self.base_url = base_url
        self._check = check

    async def api(self, path: str, **params: str) -> Any:
        """The ``data`` of ``GET /api/v1/<path>``; ``StackError`` unless the status is success."""
        async with self.session.get(f"{self.base_url}/api/v1/{path}", params=params) as response:
            payload = await response.json()
        if payload.get("status") != "success":
            raise StackError(f"Prometheus {path} {params}: {payload.get('error', payload)}")
        return payload["data"]

    async def query(self, expr: str) -> list[Series]:
        """An instant query; each series has one sample."""
        data = await self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise StackError(f"{expr!r} returned a {data['resultType']}, not a vector")
        return [
            Series(labels=item["metric"], values=((float(item["value"][0]), float(item["value"][1])),))
            for item in data["result"]
        ]

    async def query_range(self, expr: str, *, start: float, end: float, step: float = 1.0) -> list[Series]:
        """A range query over Unix times ``start`` to ``end``."""
        data = await self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        return [
            Series(labels=item["metric"], values=tuple((float(t), float(v)) for t, v in item["values"]))
            for item in data["result"]
        ]

    async def alerts(self) -> list[PromAlert]:
        """Alerts Prometheus holds as pending or firing right now."""
        data = await self.api("alerts")
        return [
            PromAlert(alertname=alert["labels"].get("alertname", ""), state=alert["state"], labels=alert["labels"])
            for alert in data["alerts"]
        ]

    async def wait_for_scrape_after(self, moment: float, *, within: float = 15.0) -> None:
        """Wait until Prometheus has scraped the gateway after Unix time ``moment``."""

        async def scraped() -> bool:
            self._check()
            samples = await self.query(f'timestamp(up{{job="{JOB}"}})')
            return bool(samples) and samples[0].values[0][1] > moment

        await wait_until(scraped, within=within, what="a Prometheus scrape of the gateway", interval=0.25)
