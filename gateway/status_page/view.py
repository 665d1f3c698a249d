"""The page's words and shapes: every display string and sparkline path, computed once, here.

The server renders the first paint from this view and the page's script copies later
views into the DOM as text, so formatting lives in one language and the script never
builds markup from data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Final

from gateway.status_page.sampler import SLOTS, WINDOW_SECONDS

X_STEP: Final = 2  # viewBox units between two samples
VIEW_WIDTH: Final = X_STEP * (SLOTS - 2)  # the oldest of SLOTS - 1 steps at x = 0, the newest at the right edge
VIEW_HEIGHT: Final = 40
SPARKS: Final = (("requests", "requests/s"), ("failures", "failures/s"), ("first_token", "first token p50"))
SPARK_LABELS: Final = {"requests": "req/s", "failures": "fail/s", "first_token": "p50"}
CELLS: Final = (
    "status",
    "since",
    "working",
    "breaker",
    "probe",
    "requests",
    "failures",
    "failovers",
    "client_errors",
    "downtime",
    "first_token",
)
STATE_WORDS: Final = {"serving": "Serving", "degraded": "Degraded", "down": "Down"}
# The working flag in its own words: on/off, never "up"/"down", which the Status column says.
FLAG_WORDS: Final = {
    "unknown": "unknown: not yet probed",
    "checking": "checking: first probe running",
    "working": "on",
    "not_working": "off",
}
REFUSAL_CODES: Final = {
    "breaker_open": "503 circuit_open",
    "half_open_busy": "503 half_open_busy",
    "not_working": "503 upstream_not_working",
    "overloaded": "429 gateway_overloaded",
}
RECEIVED_LABELS: Final = {
    "2xx": "2xx",
    "4xx": "4xx (499 incl.)",
    "5xx": "5xx",
    "stream_errors": "streams ended by an error",
}
ARROW: Final = "\u2192"


def seconds(value: float | None) -> str:
    """A duration for people: ``850 ms``, ``2.5 s``, ``4 min``, ``3.2 h``."""
    if value is None or math.isnan(value):
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    if value < 3600:
        return f"{value / 60:.0f} min"
    if value < 86400:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def elapsed(value: float | None) -> str:
    """A time since something, to the second: ``42 s``, ``1 min 2 s``, ``3 h 4 min``."""
    if value is None:
        return "–"
    whole = int(value)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def count(value: float | None) -> str:
    """A counter difference: whole numbers, thousands grouped."""
    return "–" if value is None else f"{value:,.0f}"


def spark_path(values: Sequence[float | None]) -> tuple[str, float]:
    """An SVG path of ``values`` right-aligned in the full ring's width (gaps where None) and its peak.

    Whole-number coordinates in a :data:`VIEW_WIDTH` x :data:`VIEW_HEIGHT` box, and implicit
    line-tos after each move: 64 routes x 3 series x 180 points are formatted on every refresh.
    """
    peak = max((value for value in values if value is not None), default=0.0)
    scale = (VIEW_HEIGHT - 2) / peak if peak > 0 else 0.0
    bottom = VIEW_HEIGHT - 1
    first_x = VIEW_WIDTH - X_STEP * (len(values) - 1)
    parts: list[str] = []
    pen_down = False
    for index, value in enumerate(values):
        if value is None:
            pen_down = False
            continue
        point = f"{first_x + X_STEP * index} {round(bottom - value * scale)}"
        parts.append(point if pen_down else "M" + point)
        pen_down = True
    return " ".join(parts), peak


def _event(event: dict[str, Any], now: float) -> dict[str, str]:
    """One timeline line: when (UTC, and how long ago), route, what changed from -> to, why."""
    when = time.strftime("%H:%M:%S", time.gmtime(event["at"]))
    return {
        "time": f"{when} UTC ({elapsed(max(0.0, now - event['at']))} ago)",
        "route": event["route"],
        "change": f"{event['kind']}: {event['old'].replace('_', ' ')} {ARROW} {event['new'].replace('_', ' ')}",
        "reason": event["reason"],
    }


def _probe(probe: dict[str, Any] | None) -> str:
    if probe is None:
        return "none yet"
    words = f"{'ok' if probe['ok'] else 'failed'}, {seconds(probe['latency'])}, {seconds(probe['age'])} ago"
    return words if probe["error"] is None else f"{words}: {probe['error']}"


def _breaker(breaker: dict[str, Any]) -> str:
    words = str(breaker["state"]).replace("_", "-")
    if breaker["mode"] != "auto":
        return words + " (forced until an operator releases it)"
    if breaker["retry_after"] is not None:
        words += f", {seconds(breaker['retry_after'])} left"
    if breaker.get("opened_by") == "fleet" and breaker["state"] != "closed":
        words += " (opened by the fleet)"
    return words


def _worker(data: dict[str, Any]) -> str:
    if data.get("workers", 1) <= 1:
        return ""
    return f"; worker pid {data['pid']} of {data['workers']}: counts, trends and in-flight are this worker's"


def route_view(route: dict[str, Any], spark: dict[str, Sequence[float | None]], *, history: str) -> dict[str, Any]:
    """One route's cells (text), row class and sparklines."""
    p50, p95 = route["first_token_p50"], route["first_token_p95"]
    working = FLAG_WORDS[route["working_state"]]
    if route["working_mode"] != "auto":
        working = f"{'on' if route['working'] else 'off'}, pinned by an operator"
    sparks = {}
    for key, label in SPARKS:
        path, peak = spark_path(spark[key])
        shown = seconds(peak) if key == "first_token" else f"{peak:.2f}/s"
        sparks[key] = {
            "d": path,
            "scale": f"max {shown}",
            "title": f"{route['name']}: {label} over the last {history}, peak {shown}",
        }
    since = route["since_change"]
    flaps, downtime = route["flaps"], route["downtime"]
    return {
        "name": route["name"],
        "url": route["url"],
        "class": "up" if route["up"] else "down",
        "cells": {
            "status": "up" if route["up"] else "down",
            "since": "–" if since is None else f"{'up' if route['up'] else 'down'} for {elapsed(since)}",
            "working": working,
            "breaker": _breaker(route["breaker"]),
            "probe": _probe(route["probe"]),
            "requests": count(route["requests"]),
            "failures": count(route["failures"]),
            "failovers": count(route["failovers"]),
            "client_errors": count(route["client_errors"]),
            "downtime": "–" if flaps is None else f"{count(flaps)} down, {elapsed(downtime)} in total",
            "first_token": f"{seconds(p50)} / {seconds(p95)}",
        },
        "sparks": sparks,
    }


def page_view(data: dict[str, Any], sparks: dict[str, dict[str, Sequence[float | None]]]) -> dict[str, Any]:
    """The whole page's text from :func:`gateway.status_page.data.page_data` and each route's series."""
    history = seconds(data["step"] * (SLOTS - 1))
    # The rings hold SLOTS samples: at a short step the "5 minutes" windows are shorter, and say so.
    span = seconds(min(WINDOW_SECONDS, data["step"] * (SLOTS - 1)))
    window = seconds(data["window"]) if data["window"] else "no samples yet"
    state = data["state"]
    rejections = [
        {"key": reason, "label": REFUSAL_CODES[reason], "text": count(value)}
        for reason, value in data["rejections"].items()
    ]
    received = [{"key": key, "label": RECEIVED_LABELS[key], "text": count(v)} for key, v in data["received"].items()]
    return {
        "state": state,
        "state_text": STATE_WORDS[state] + (" (shutting down)" if data["draining"] else ""),
        "meta": f"version {data['version']}, up {seconds(data['uptime'])}" + _worker(data),
        "span": span.replace(" ", "\u00a0"),
        "inflight": f"{data['inflight']} / {data['limit']}",
        "retries": f"{count(data['retries'])} retries, {count(data['failovers'])} failovers",
        "rejections": rejections,
        "received": received,
        "events": [_event(event, data["generated_at"]) for event in data["events"]],
        "window": f"counts over the last {window}",
        "history": f"sparklines: last {history}, one point per {seconds(data['step'])}",
        "routes": [route_view(route, sparks[route["name"]], history=history) for route in data["routes"]],
    }
