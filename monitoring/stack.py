"""The monitoring stack on loopback: simulator, gateway, Alertmanager, Prometheus and a webhook receiver.

The simulator (``python -m gateway sim``), the gateway (``python -m gateway serve``),
Alertmanager and Prometheus run as separate OS processes on free 127.0.0.1 ports;
the webhook receiver runs in this process. Configs are the shipped ones, rewritten
into a temporary directory by :mod:`monitoring.configs` (addresses, short intervals
and the ``for:`` of named alerts only). Use ``async with Stack() as stack:``: every
process started is stopped on the way out, whatever happened (errors, timeouts,
cancellation by Ctrl-C), and :meth:`Stack.kill_all` is a synchronous last resort.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final

import aiohttp

from gateway.flowgpt.protocol import UPSTREAM_PATH
from gateway.simulator.routes import route_path
from monitoring.clients import GatewayClient, PrometheusClient, SimulatorControl
from monitoring.configs import (
    JOB,
    alertmanager_config_with_webhook,
    copy_rules,
    prometheus_config_for,
)
from monitoring.processes import ManagedProcess, StackError, clean_env, find_tool, free_port, wait_until
from monitoring.webhook import Notification, WebhookReceiver

# Alerts a drill waits for, with ``for:`` short enough to see them fire within seconds.
DRILL_FOR_OVERRIDES: Final[Mapping[str, str]] = MappingProxyType(
    {"GatewayUpstreamNotWorking": "2s", "GatewayCircuitOpen": "2s"}
)
# A gateway that notices a broken upstream within about a second and recovers as fast.
FAST_GATEWAY_ENV: Final[Mapping[str, str]] = MappingProxyType(
    {
        "GATEWAY_PROBE_INTERVAL": "0.5",
        "GATEWAY_PROBE_UNHEALTHY_INTERVAL": "0.5",
        # Two failed probes (about a second) leave time for one chat request to trip the breaker.
        "GATEWAY_PROBE_UNHEALTHY_THRESHOLD": "2",
        "GATEWAY_BREAKER_FAIL_MAX": "2",
        "GATEWAY_BREAKER_RESET_SECONDS": "2",
        "GATEWAY_RETRY_BACKOFF_BASE": "0.01",
        "GATEWAY_RETRY_BACKOFF_MAX": "0.05",
        "GATEWAY_TIMEOUT_FIRST_TOKEN": "3",
        "GATEWAY_TIMEOUT_IDLE": "3",
        "GATEWAY_TIMEOUT_TOTAL": "10",
        "GATEWAY_SHUTDOWN_TIMEOUT": "2",
        "GATEWAY_LOG_LEVEL": "INFO",
    }
)
_SIM_BANNER: Final = re.compile(r"FlowGpt simulator on (http://\S+?)" + re.escape(UPSTREAM_PATH))
_PORT_ATTEMPTS: Final = 3


@dataclass(frozen=True, kw_only=True)
class StackOptions:
    """How the stack runs; the defaults suit a drill or a test (seconds, not minutes)."""

    host: str = "127.0.0.1"
    for_overrides: Mapping[str, str] = field(default_factory=lambda: dict(DRILL_FOR_OVERRIDES))
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    # Prometheus re-sends firing alerts this often (1m in production); alerts expire after 4x.
    alert_resend_delay: str = "2s"
    alertmanager_timings: Mapping[str, str] = field(
        default_factory=lambda: {"group_wait": "1s", "group_interval": "1s"}
    )
    resolve_timeout: str = "30s"
    gateway_env: Mapping[str, str] = field(default_factory=lambda: dict(FAST_GATEWAY_ENV))
    start_timeout: float = 30.0
    # Route names: the gateway reaches the simulator by these routes (GATEWAY_UPSTREAMS);
    # empty: the single default route (GATEWAY_UPSTREAM_URL).
    routes: tuple[str, ...] = ()
    # None: a temporary directory, removed on stop. A path: kept (configs, data and logs).
    workdir: Path | None = None


class Stack:
    """Starts the whole stack on loopback and always stops what it started."""

    def __init__(
        self, options: StackOptions | None = None, *, on_notification: Callable[[Notification], None] | None = None
    ) -> None:
        self.options = options or StackOptions()
        self.webhook = WebhookReceiver(on_notification=on_notification)
        self.processes: list[ManagedProcess] = []
        self.sim_url = self.gateway_url = self.alertmanager_url = self.prometheus_url = ""
        self.started_at = 0.0  # time.time() when start() began
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._workdir: Path | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def workdir(self) -> Path:
        """Where configs, data and logs are."""
        if self._workdir is None:
            raise StackError("the stack has not been started")
        return self._workdir

    @property
    def rules_dir(self) -> Path:
        """The rewritten copy of monitoring/rules that Prometheus loads."""
        return self.workdir / "rules"

    async def start(self) -> None:
        """Start everything and wait until each piece answers; on any failure stop what started."""
        try:
            await self._start()
        except StackError as exc:
            tails = self.log_tails() if "--- last" not in str(exc) else ""
            message = f"{exc}\n{tails}" if tails else str(exc)
            await self.stop()
            raise StackError(message) from exc
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        options = self.options
        self.started_at = time.time()
        if options.workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="flowgpt-stack-")
            self._workdir = Path(self._tempdir.name)
        else:
            self._workdir = options.workdir
            self._workdir.mkdir(parents=True, exist_ok=True)
            # Old TSDB or notification-log state would change what fires and what gets sent.
            for data in ("prometheus-data", "alertmanager-data", "rules"):
                shutil.rmtree(self._workdir / data, ignore_errors=True)
        prometheus = find_tool("prometheus")
        alertmanager = find_tool("prometheus-alertmanager", "alertmanager")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        webhook_url = await self.webhook.start(options.host)
        copy_rules(self.rules_dir, for_overrides=options.for_overrides)
        try:
            async with asyncio.timeout(options.start_timeout):
                await asyncio.gather(self._start_simulator(), self._start_alertmanager(alertmanager, webhook_url))
                await self._start_gateway()
                await self._start_prometheus(prometheus)
        except TimeoutError as exc:
            raise StackError(f"the stack did not start within {options.start_timeout:g}s") from exc

    async def stop(self) -> None:
        """Stop everything in reverse order of start; idempotent and bounded.

        If the stop itself is interrupted (a second Ctrl-C), the remaining children
        are killed before the interruption propagates.
        """
        for process in reversed(self.processes):
            try:
                await asyncio.to_thread(process.stop)  # a thread: the webhook receiver serves meanwhile
            except BaseException:  # e.g. a second Ctrl-C: do not leave the others running
                self.kill_all()
                raise
        await self.webhook.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def kill_all(self) -> None:
        """SIGKILL every child still running; synchronous, for use when the event loop is gone."""
        for process in self.processes:
            process.kill()

    def ensure_running(self) -> None:
        """Raise ``StackError`` (with its output) if any child has exited; cheap, call it while polling."""
        for process in self.processes:
            process.ensure_running()

    def leftover_processes(self) -> list[ManagedProcess]:
        """Children that were started and have not exited (empty after a proper stop)."""
        return [process for process in self.processes if process.running]

    # -- starting each piece -------------------------------------------------------------------

    def _process(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None, *, log_name: str | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.workdir, env=env, log_name=log_name)
        self.processes.append(process)
        return process

    async def _start_on_free_port(
        self, name: str, argv_for: Callable[[int], list[str]], ready_url: Callable[[str], str], **env: str
    ) -> str:
        """Start ``name`` on a free port, retrying with another one if the port was taken meanwhile."""
        host = self.options.host
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port(host)
            base = f"http://{host}:{port}"
            log_name = name if attempt == 1 else f"{name}-{attempt}"
            process = self._process(name, argv_for(port), env or None, log_name=log_name)
            try:
                await process.wait_ready(ready_url(base), within=self.options.start_timeout)
            except StackError:
                taken = "address already in use" in process.log_text().lower()
                if process.running or not taken or attempt == _PORT_ATTEMPTS:
                    raise
                self.processes.remove(process)  # exited (and reaped); the retry replaces it
                continue
            return base
        raise AssertionError("unreachable")

    async def _start_simulator(self) -> None:
        process = self._process(
            "simulator", [sys.executable, "-m", "gateway", "sim", "--host", self.options.host, "--port", "0"]
        )

        async def banner() -> str | None:
            process.ensure_running()
            match = _SIM_BANNER.search(process.log_text())
            return None if match is None else match.group(1)

        self.sim_url = await wait_until(banner, within=self.options.start_timeout, what="the simulator's banner")
        await process.wait_ready(f"{self.sim_url}/_sim/healthz", within=self.options.start_timeout)

    async def _start_alertmanager(self, binary: str, webhook_url: str) -> None:
        options = self.options
        config = self.workdir / "alertmanager.yml"
        config.write_text(
            alertmanager_config_with_webhook(
                webhook_url, timings=options.alertmanager_timings, resolve_timeout=options.resolve_timeout
            ),
            encoding="utf-8",
        )

        def argv(port: int) -> list[str]:
            return [
                binary,
                f"--config.file={config}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address={options.host}:{port}",
                "--cluster.listen-address=",  # no gossip port on 0.0.0.0
            ]

        self.alertmanager_url = await self._start_on_free_port("alertmanager", argv, lambda base: f"{base}/-/ready")

    async def _start_gateway(self) -> None:
        # The caller's GATEWAY_* settings (API keys, a real upstream...) must not leak in.
        env = clean_env(**{**self.options.gateway_env, "GATEWAY_HOST": self.options.host})
        if self.options.routes:
            base = self.sim_url
            routes = [{"name": name, "url": base + route_path(name)} for name in self.options.routes]
            env["GATEWAY_UPSTREAMS"] = json.dumps(routes)
        else:
            env["GATEWAY_UPSTREAM_URL"] = self.sim_url + UPSTREAM_PATH

        def argv(port: int) -> list[str]:
            return [sys.executable, "-m", "gateway", "serve", "--port", str(port)]

        self.gateway_url = await self._start_on_free_port("gateway", argv, lambda base: f"{base}/healthz", **env)

        async def probed_and_working() -> bool:
            self.ensure_running()
            status, body = await self.gateway.readiness()
            return status == 200 and all(int(route["probes_total"]) > 0 for route in body["routes"])

        await wait_until(probed_and_working, within=self.options.start_timeout, what="the gateway's first probe")

    async def _start_prometheus(self, binary: str) -> None:
        options = self.options
        config = self.workdir / "prometheus.yml"
        gateway_address = self.gateway_url.removeprefix("http://")
        alertmanager_address = self.alertmanager_url.removeprefix("http://")
        config.write_text(
            prometheus_config_for(
                target=gateway_address,
                alertmanager=alertmanager_address,
                scrape_interval=options.scrape_interval,
                evaluation_interval=options.evaluation_interval,
                rules_dir=self.rules_dir,
            ),
            encoding="utf-8",
        )

        def argv(port: int) -> list[str]:
            return [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address={options.host}:{port}",
                f"--rules.alert.resend-delay={options.alert_resend_delay}",
            ]

        self.prometheus_url = await self._start_on_free_port("prometheus", argv, lambda base: f"{base}/-/ready")

        async def scraping_and_alerting() -> bool:
            self.ensure_running()
            up = await self.prometheus.query(f'up{{job="{JOB}"}}')
            managers = await self.prometheus.api("alertmanagers")
            return bool(up) and up[0].values[-1][1] == 1 and bool(managers.get("activeAlertmanagers"))

        await wait_until(
            scraping_and_alerting,
            within=self.options.start_timeout,
            what="Prometheus to scrape the gateway and find Alertmanager",
        )

    # -- talking to the pieces ------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP client session (open while the stack runs)."""
        if self._session is None:
            raise StackError("the stack is not running")
        return self._session

    @property
    def simulator(self) -> SimulatorControl:
        """The simulator's control API."""
        return SimulatorControl(self.session, self.sim_url)

    @property
    def gateway(self) -> GatewayClient:
        """The gateway's endpoints."""
        return GatewayClient(self.session, self.gateway_url, check=self.ensure_running)

    @property
    def prometheus(self) -> PrometheusClient:
        """Prometheus's HTTP API."""
        return PrometheusClient(self.session, self.prometheus_url, check=self.ensure_running)

    def log_tails(self, lines: int = 15) -> str:
        """The end of every process's output, for failure messages."""
        return "\n".join(process.log_tail(lines) for process in self.processes)
