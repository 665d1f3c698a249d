"""The page's words and shapes: every display string and sparkline path, computed once, here.

The server renders the first paint from this view and the page's script copies later
views into the DOM as text, so formatting lives in one language and the script never
builds markup from data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from gateway.status_page.sampler import SLOTS, WINDOW_SECONDS

X_STEP: Final = 2  # viewBox units between two samples
VIEW_WIDTH: Final = X_STEP * (SLOTS - 2)  # the oldest of SLOTS - 1 steps at x = 0, the newest at the right edge
VIEW_HEIGHT: Final = 40
SPARKS: Final = (("requests", "requests/s"), ("failures", "failures/s"), ("first_token", "first token p50"))
SPARK_LABELS: Final = {"requests": "req/s", "failures": "fail/s", "first_token": "p50"}
CELLS: Final = ("status", "working", "breaker", "probe", "requests", "failures", "first_token")
STATE_WORDS: Final = {"serving": "Serving", "degraded": "Degraded", "down": "Down"}


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
    working = "working" if route["working"] else "not working"
    sparks = {}
    for key, label in SPARKS:
        path, peak = spark_path(spark[key])
        shown = seconds(peak) if key == "first_token" else f"{peak:.2f}"
        sparks[key] = {"d": path, "title": f"{route['name']}: {label} over the last {history}, peak {shown}"}
    return {
        "name": route["name"],
        "url": route["url"],
        "class": "up" if route["up"] else "down",
        "cells": {
            "status": "up" if route["up"] else "down",
            "working": working if route["working_mode"] == "auto" else f"{working} (pinned)",
            "breaker": _breaker(route["breaker"]),
            "probe": _probe(route["probe"]),
            "requests": count(route["requests"]),
            "failures": count(route["failures"]),
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
        {"reason": reason, "label": reason.replace("_", " "), "text": count(value)}
        for reason, value in data["rejections"].items()
    ]
    return {
        "state": state,
        "state_text": STATE_WORDS[state] + (" (shutting down)" if data["draining"] else ""),
        "meta": f"version {data['version']}, up {seconds(data['uptime'])}" + _worker(data),
        "span": span.replace(" ", "\u00a0"),
        "inflight": f"{data['inflight']} / {data['limit']}",
        "retries": count(data["retries"]),
        "rejections": rejections,
        "window": f"counts over the last {window}",
        "history": f"sparklines: last {history}, one point per {seconds(data['step'])}",
        "routes": [route_view(route, sparks[route["name"]], history=history) for route in data["routes"]],
    }
