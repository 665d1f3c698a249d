"""The periodic health probe: a tiny real chat request whose result sets the provider's ``working`` flag.

The prober publishes :class:`ProbeFinished`; the working flag, the metrics and the breaker
subscribe. It subscribes to :class:`BreakerChanged` itself: a trip caused by live traffic
makes it probe at once instead of at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind

from gateway.errors import GatewayError, UpstreamError
from gateway.events import BreakerChanged, EventBus, ProbeFinished, ProbeResult
from gateway.flowgpt.client import ChatPrompt
from gateway.flowgpt.protocol import Message, resolve_model
from gateway.tracing import Tracing

if TYPE_CHECKING:
    from gateway.flowgpt.client import FlowGptClient
    from gateway.probe_lease import ProbeLease
    from gateway.working import WorkingFlag

log = logging.getLogger(__name__)


class Prober:
    """Runs probes on a schedule (faster while unhealthy) or at once when asked."""

    def __init__(
        self,
        client: FlowGptClient,
        flag: WorkingFlag,
        events: EventBus,
        *,
        interval: float,
        unhealthy_interval: float,
        timeout: float,
        model: str,
        prompt: str,
        clock: Callable[[], float] = time.monotonic,
        jitter: float = 0.1,
        lease: ProbeLease | None = None,
        scrub: Callable[[str], str] = lambda text: text,
        tracing: Tracing | None = None,
    ) -> None:
        self._client = client
        self._flag = flag
        self._events = events
        self._interval = interval
        self._unhealthy_interval = unhealthy_interval
        self._timeout = timeout
        self._prompt = ChatPrompt(resolve_model(model), (Message("user", prompt),))
        self._clock = clock
        self._jitter = jitter
        # With a fleet, one process holds the route's probe lease; the others skip their ticks.
        self._lease = lease
        # An upstream's error may quote what it was sent (a token, the prompt): scrubbed once, here,
        # so /readyz, /status, the logs, the status page and the fleet never see it.
        self._scrub = scrub
        self._tracing = tracing
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def next_delay(self) -> float:
        """Seconds until the next probe: shorter while the upstream is not working."""
        base = self._interval if self._flag.working else self._unhealthy_interval
        return base * random.uniform(1 - self._jitter, 1 + self._jitter)

    def trigger(self) -> None:
        """Probe now instead of at the next tick."""
        self._wake.set()

    def breaker_changed(self, event: BreakerChanged) -> None:
        """Subscriber: live traffic tripped a closed breaker, so find out now whether the upstream is down.

        Not after a failed half-open trial: a probe that succeeds while live calls fail would
        half-open the breaker again at once, and every caller would become a failing trial.
        """
        if event.old == "closed" and event.new == "open" and event.by_traffic:
            self.trigger()

    async def probe_once(self) -> ProbeResult:
        """One probe straight through the client, bypassing admission; records the result (and a span)."""
        if self._tracing is None or not self._tracing.enabled:
            return await self._probe()
        attributes = {"gateway.route": self._flag.route, "gen_ai.request.model": self._prompt.model}
        tracer = self._tracing.tracer
        with tracer.start_as_current_span("probe flowgpt", kind=SpanKind.CLIENT, attributes=attributes) as span:
            result = await self._probe()
            if result.ok:
                span.set_attribute("gateway.outcome", "success")
            else:
                Tracing.failed(span, result.kind or "error")
            return result

    async def _probe(self) -> ProbeResult:
        started = self._clock()
        error: str | None = None
        kind: str | None = None
        self._flag.probe_started()
        try:
            async with asyncio.timeout(self._timeout):
                stream = await self._client.open(self._prompt)
                try:
                    await anext(stream)
                finally:
                    await stream.aclose()
        except TimeoutError:
            # Unknown whether the connection was made: counted as this host's path, never shared wide.
            error, kind = f"no text within {self._timeout:g}s", "probe_timeout"
        except UpstreamError as exc:
            error, kind = exc.message, exc.cause
        except GatewayError as exc:
            error = exc.message
        except Exception as exc:  # the probe must survive anything the upstream or a bug throws
            log.exception("probe failed unexpectedly route=%s", self._flag.route)
            error = f"unexpected {type(exc).__name__}"
        finally:
            self._flag.probe_ended()
        latency = self._clock() - started
        error = None if error is None else self._scrub(error)
        result = ProbeResult(ok=error is None, at=time.time(), latency=latency, error=error, kind=kind)
        if not result.ok:
            log.warning("health probe failed route=%s error=%s", self._flag.route, result.error)
        self._events.publish(ProbeFinished(self._flag.route, result, started=started))
        return result

    async def run(self, after: Callable[[], Awaitable[None]] | None = None) -> None:
        """Probe forever, once ``after`` returns; survives every exception; ends only by cancellation."""
        if after is not None:
            await after()
        while True:
            # Cleared before probing, so a trigger that arrives during the probe is kept.
            self._wake.clear()
            try:
                if self._lease is None or self._lease.may_probe():
                    await self.probe_once()
            except Exception:
                log.exception("probe loop error")
            delay = self.next_delay()
            self._flag.probe_scheduled(self._clock() + delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def start(self, after: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start the background task; the first probe waits for ``after`` (joining the fleet, say)."""
        self._task = asyncio.get_running_loop().create_task(self.run(after), name=f"health-probe-{self._flag.route}")

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
