"""An in-process Alertmanager webhook receiver that records what each receiver got."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertNote:
    """One alert inside a notification."""

    alertname: str
    status: str  # "firing" or "resolved"
    labels: Mapping[str, str]

    @property
    def severity(self) -> str:
        """The alert's severity label ("" when unset)."""
        return self.labels.get("severity", "")


@dataclass(frozen=True)
class Notification:
    """One webhook call from Alertmanager."""

    receiver: str  # Alertmanager's receiver name, from the body
    path: str  # the URL path it was sent to, e.g. "/pager"
    status: str
    alerts: tuple[AlertNote, ...]
    received_at: float  # time.monotonic()


def parse_notification(body: Mapping[str, Any], *, path: str, received_at: float) -> Notification:
    """A notification from Alertmanager's webhook JSON (version 4)."""
    alerts = tuple(
        AlertNote(
            alertname=str(alert.get("labels", {}).get("alertname", "")),
            status=str(alert.get("status", "")),
            labels={str(k): str(v) for k, v in alert.get("labels", {}).items()},
        )
        for alert in body.get("alerts", [])
    )
    return Notification(
        receiver=str(body.get("receiver", "")),
        path=path,
        status=str(body.get("status", "")),
        alerts=alerts,
        received_at=received_at,
    )


@dataclass
class WebhookReceiver:
    """Accepts ``POST /<anything>`` on loopback and keeps every notification in order."""

    on_notification: Callable[[Notification], None] | None = None
    notifications: list[Notification] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self, host: str) -> str:
        """Listen on a free port of ``host``; returns the base URL."""
        app = web.Application()
        app.router.add_post("/{receiver}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        note = parse_notification(body, path=request.path, received_at=time.monotonic())
        self.notifications.append(note)
        if self.on_notification is not None:
            try:
                self.on_notification(note)
            except Exception:  # a reporting bug must not make Alertmanager retry
                log.exception("webhook callback failed")
        return web.json_response({"status": "ok"})

    def find(self, alertname: str, status: str, *, since: float = 0.0) -> tuple[Notification, AlertNote] | None:
        """The first notification (received at or after ``since``) carrying ``alertname`` with ``status``."""
        for note in self.notifications:
            if note.received_at < since:
                continue
            for alert in note.alerts:
                if alert.alertname == alertname and alert.status == status:
                    return note, alert
        return None

    def alertnames(self, status: str) -> set[str]:
        """Every alert name received with ``status``."""
        return {alert.alertname for note in self.notifications for alert in note.alerts if alert.status == status}
