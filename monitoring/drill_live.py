"""Drill scenario "live traffic fails, probes pass": the page arrives although every working flag says working.

Every route breaks in a way the health probe does not see: the upstream answers 403 to every
request that mentions "gateways" (``reject_marker`` with ``reject_status: 403``: what real
clients ask is blocked), so the probe's "ping" passes while every real request fails before
its first token (a 403 counts against the upstream; only 400/413/422 are the request's own
fault). A client sending 2 requests a second gets 502s (each request fails over to the other
route, which fails too) and the breakers open; each passing probe half-opens a breaker and the
next request, its trial, fails again (a request finding both open gets 503 ``circuit_open``).

(A stream cut after its first text, ``reset_after``, is not this case: a trial's first token
closes the breaker, so the breakers flap instead of refusing; the availability page still
fires, because the SLI counts the 502s and the stream errors clients get.) The flags stay on, so
GatewayUpstreamNotWorking stays silent; the pages are GatewayAllBreakersOpen and the client
availability burn (GatewayAvailabilityBudgetBurn, critical).

After the heal the breakers close at the next trial and GatewayAllBreakersOpen resolves. The
availability page resolves when its 5-minute window's error ratio falls under 14.4x the
budget: in production within 5 minutes of traffic; here the drill sends a burst of good
requests so that it happens in seconds (the rule is not changed). The slow-burn ticket, the
attempt-level ticket and GatewayCircuitOpen may fire too: the budget was really spent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Final

from monitoring.drill import Drill
from monitoring.processes import StackError
from monitoring.stack import StackOptions

LIVE_ROUTES: Final = ("a", "b")
# What clients ask gets 403 (counts against the upstream); the probe's "ping" does not contain it.
LIVE_FAULTS: Final = {"reject_marker": "gateways", "reject_status": 403}
CLIENT_PROMPT: Final = "Tell me a story about gateways."
PAGES: Final = {"GatewayAllBreakersOpen": "pager", "GatewayAvailabilityBudgetBurn": "pager"}
LIVE_FOR_OVERRIDES: Final = {
    "GatewayAllBreakersOpen": "2s",
    "GatewayAvailabilityBudgetBurn": "2s",
    "GatewayCircuitOpen": "2s",
    "GatewayUpstreamNotWorking": "2s",  # shortened too, so that it would show if the flags went off
}
CLIENT_PERIOD: Final = 0.5  # a client sending 2 requests a second
DILUTE_CALLERS: Final = 8


def live_options(workdir: Path | None) -> StackOptions:
    """A stack with two routes and the ``for:`` of the alerts this scenario waits for shortened."""
    return StackOptions(workdir=workdir, routes=LIVE_ROUTES, for_overrides=dict(LIVE_FOR_OVERRIDES))


class LiveFailsDrill(Drill):
    """Break every route for live traffic only; the pages must arrive, and resolve after the heal."""

    name = "live-fails"
    alerts = PAGES
    severity = "critical"
    tolerated = frozenset({"GatewayCircuitOpen", "GatewayUpstreamErrorBudgetBurn"})

    async def _break_and_heal(self) -> None:
        stack = self.stack
        answers: Counter[str] = Counter()
        client = asyncio.create_task(self._client(answers), name="drill-client")
        try:
            self.result.broke_at = self.now()
            for route in LIVE_ROUTES:
                await stack.simulator.set_faults(LIVE_FAULTS, route=route)
            self.say(f"BREAK: every route answers 403 to what clients ask {LIVE_FAULTS} (the probe passes)")
            await self._wait(self._refusing_while_working, "every breaker to refuse while the flags say working")
            self.say("gateway: every breaker refuses, every working flag still on; clients get " + _tally(answers))
            await self._wait(self._all_notified("firing"), "firing notifications of " + ", ".join(PAGES))
            self.result.healed_at = self.now()
            for route in LIVE_ROUTES:
                await stack.simulator.heal(route=route)
            self.say(f"HEAL: DELETE /_sim/faults on routes {', '.join(LIVE_ROUTES)}; clients got {_tally(answers)}")
        finally:
            client.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client
        await stack.gateway.wait_working(True, within=self.phase_timeout)
        self.say("gateway: breakers closed; good traffic dilutes the 5-minute window of the availability SLI")
        good: Counter[str] = Counter()
        callers = [asyncio.create_task(self._dilute(good)) for _ in range(DILUTE_CALLERS)]
        try:
            await self._wait(self._all_notified("resolved"), "resolved notifications of " + ", ".join(PAGES))
        finally:
            for caller in callers:
                caller.cancel()
            await asyncio.gather(*callers, return_exceptions=True)
        self.say(f"after the heal clients got {_tally(good)}")
        await self._wait(self._drill_alerts_inactive, "Prometheus to show the pages inactive")

    async def _refusing_while_working(self) -> bool:
        _, body = await self.stack.gateway.readiness()
        routes = body["routes"]
        if not all(route["working"] for route in routes):
            raise StackError("a working flag went off: the probe saw the fault (it must not, in this scenario)")
        return all(route["breaker"]["state"] != "closed" for route in routes)

    async def _client(self, answers: Counter[str]) -> None:
        """Two chat requests a second until cancelled, counting what came back."""
        while True:
            with contextlib.suppress(StackError, OSError):
                result = await self.stack.gateway.chat(CLIENT_PROMPT)
                answers[f"{result.status} {result.code or 'ok'}"] += 1
            await asyncio.sleep(CLIENT_PERIOD)

    async def _dilute(self, answers: Counter[str]) -> None:
        while True:
            with contextlib.suppress(StackError, OSError):
                result = await self.stack.gateway.chat("Hello")
                answers[f"{result.status} {result.code or 'ok'}"] += 1


def _tally(answers: Counter[str]) -> str:
    return ", ".join(f"{count} x {answer}" for answer, count in answers.most_common()) or "nothing yet"
