"""The page's HTML and its headers: a stdlib ``string.Template``, every dynamic value escaped.

The style and the script are package resources inlined into the page; their SHA-256
hashes, computed once at import, are the only sources the Content-Security-Policy
allows, so no injected markup could style or script anything. ``string.Template`` is
enough for one page with a dozen holes; a template library would be a dependency for
nothing.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from importlib import resources
from string import Template
from typing import Any, Final

from gateway.status_page.view import CELLS, SPARK_LABELS, SPARKS, VIEW_HEIGHT, VIEW_WIDTH


def _resource(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


STYLE: Final = _resource("page.css")
SCRIPT: Final = _resource("page.js")
_PAGE: Final = Template(_resource("page.html"))

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        f"style-src {_hash(STYLE)}",
        f"script-src {_hash(SCRIPT)}",
        "connect-src 'self'",
        "img-src data:",  # the empty data: favicon, so the browser does not ask for /favicon.ico
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
# Sent with the page and the data: nothing cached (the data is live, and may be behind a password),
# no MIME sniffing, no framing, no referrer leaking the gateway's address.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_LABELS: Final = {
    "status": "Status",
    "since": "Since last change",
    "working": "Working flag (probes)",
    "breaker": "Breaker",
    "probe": "Last probe",
    "requests": "Requests",
    "failures": "Failures",
    "failovers": "Failovers away",
    "client_errors": "Client errors caused",
    "downtime": "Went down",
    "first_token": "First token p50 / p95",
}
_WINDOWED: Final = frozenset({"requests", "failures", "failovers", "client_errors", "downtime", "first_token"})
_NUMERIC: Final = frozenset({"requests", "failures", "failovers", "client_errors", "first_token"})


def _spark(key: str, spark: dict[str, str]) -> str:
    return (
        f"<span>{SPARK_LABELS[key]}</span>"
        f'<svg data-spark="{key}" class="spark-{key}" viewBox="0 0 {VIEW_WIDTH} {VIEW_HEIGHT}"'
        ' preserveAspectRatio="none" role="img">'
        f"<title>{escape(spark['title'])}</title>"
        f'<path class="base" d="M0 {VIEW_HEIGHT - 0.5}H{VIEW_WIDTH}"/>'
        f'<path class="line" d="{escape(spark["d"])}"/></svg>'
        f'<span class="scale" data-scale="{key}">{escape(spark["scale"])}</span>'
    )


def _head(span: str) -> str:
    cells = "".join(
        f"<th>{_LABELS[key]}{', ' + escape(span) if key in _WINDOWED else ''}</th>" for key in CELLS
    )
    return f"<th>Route</th>{cells}<th>Trend</th>"


def _items(items: list[dict[str, str]]) -> str:
    return "".join(
        f'<li data-key="{escape(item["key"])}"><span>{escape(item["label"])}</span>'
        f'<span class="num">{escape(item["text"])}</span></li>'
        for item in items
    )


def _events(events: list[dict[str, str]]) -> str:
    return "".join(
        f'<li><span class="when">{escape(e["time"])}</span> <strong>{escape(e["route"])}</strong> '
        f'<span class="change">{escape(e["change"])}</span>: <span class="why">{escape(e["reason"])}</span></li>'
        for e in events
    )


def _cell(key: str, text: str) -> str:
    # data-cell marks the element whose text the script replaces; it never touches markup.
    if key == "status":
        return f'<td data-label="{_LABELS[key]}"><span class="badge" data-cell="status">{escape(text)}</span></td>'
    numeric = ' class="num"' if key in _NUMERIC else ""
    return f'<td data-label="{_LABELS[key]}"{numeric}><div data-cell="{key}">{escape(text)}</div></td>'


def _row(route: dict[str, Any]) -> str:
    name = escape(route["name"])
    cells = "".join(_cell(key, route["cells"][key]) for key in CELLS)
    sparks = "".join(_spark(key, route["sparks"][key]) for key, _ in SPARKS)
    return (
        f'<tr class="route {escape(route["class"])}" data-route="{name}">'
        f'<td data-label="Route"><div><strong>{name}</strong><small>{escape(route["url"])}</small></div></td>'
        f'{cells}<td data-label="Trend"><div class="sparks">{sparks}</div></td></tr>'
    )


def render_page(view: dict[str, Any], *, source: str, refresh: float) -> str:
    """The whole page for ``view`` (see :func:`gateway.status_page.view.page_view`)."""
    return _PAGE.substitute(
        style=STYLE,
        script=SCRIPT,
        source=escape(source),
        refresh=escape(f"{refresh:g}"),
        state=escape(view["state"]),
        state_text=escape(view["state_text"]),
        meta=escape(view["meta"]),
        inflight=escape(view["inflight"]),
        retries=escape(view["retries"]),
        rejections=_items(view["rejections"]),
        received=_items(view["received"]),
        head=_head(view["span"]),
        events=_events(view["events"]),
        rows="\n".join(_row(route) for route in view["routes"]),
        window=escape(view["window"]),
        span=escape(view["span"]),
        history=escape(view["history"]),
    )
