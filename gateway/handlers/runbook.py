"""``GET /runbook``: docs/runbook.md as HTML, so every alert's ``runbook_url`` anchor resolves.

Prometheus builds each link from its external label ``runbook_base_url`` plus the anchor of the
alert's section; served here, that base can be the gateway itself. The rendering is deliberately
small: headings get GitHub's anchors, the rest is shown as written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
from pathlib import Path
from typing import Final

from aiohttp import web

from gateway.app_keys import SETTINGS
from gateway.errors import NotFoundError

RUNBOOK_PATH: Final = "/runbook"
# The checkout's runbook, when the gateway runs from one (the image leaves docs/ out: mount it).
CHECKOUT_RUNBOOK: Final = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"
_HEADING: Final = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_STYLE: Final = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "pre{white-space:pre-wrap;font:inherit;margin:0 0 1rem}h2{border-top:1px solid #ccc;padding-top:1rem}"
)
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# Nothing but this page's own style: no scripts, no requests elsewhere.
HEADERS: Final = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (lower case, punctuation dropped, spaces to dashes)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def render(markdown: str) -> str:
    """Headings become ``<hN id=anchor>``; everything else is kept as written, escaped."""
    parts: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block:
            parts.append(f"<pre>{html.escape(chr(10).join(block))}</pre>")
            block.clear()

    for line in markdown.splitlines():
        match = _HEADING.match(line)
        if match is None:
            block.append(line)
            continue
        flush()
        level, text = len(match[1]), match[2]
        parts.append(f'<h{level} id="{html.escape(anchor(text))}">{html.escape(text)}</h{level}>')
    flush()
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>flowgpt-gateway runbook</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def runbook_file(app: web.Application) -> Path:
    """The file ``GET /runbook`` serves: ``GATEWAY_RUNBOOK_PATH`` or the checkout's docs/runbook.md."""
    return app[SETTINGS].runbook_path or CHECKOUT_RUNBOOK


async def runbook(request: web.Request) -> web.Response:
    """The runbook as HTML; 404 when the file is not there (an image without docs/ mounted)."""
    path = runbook_file(request.app)
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except OSError:
        raise NotFoundError("no runbook here: set GATEWAY_RUNBOOK_PATH to docs/runbook.md") from None
    return web.Response(text=render(text), content_type="text/html", headers=HEADERS)
