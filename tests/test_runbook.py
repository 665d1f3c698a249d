"""``GET /runbook``: the runbook as HTML, with an element for every alert's runbook_url anchor."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.handlers.runbook import CHECKOUT_RUNBOOK, render
from monitoring.configs import alert_names
from tests.gateway_support import GatewayFactory
from tests.rule_support import RUNBOOK, RUNBOOK_URL_BASE, alert_rules

Client = TestClient[web.Request, web.Application]


async def test_every_alert_link_resolves_on_the_served_runbook(gateway: Client) -> None:
    """Each alert's runbook_url anchor names an element id of the page the gateway serves."""
    response = await gateway.get("/runbook")
    assert response.status == 200
    assert response.content_type == "text/html"
    ids = set(re.findall(r'\bid="([^"]+)"', await response.text()))
    for rule in alert_rules():
        base, _, anchor = rule.annotations["runbook_url"].partition("#")
        assert base == RUNBOOK_URL_BASE, rule.name
        assert anchor in ids, f"{rule.name}: no #{anchor} on /runbook"
    assert {name.lower() for name in alert_names()} <= ids


async def test_runbook_path_setting_serves_that_file(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    """GATEWAY_RUNBOOK_PATH names the file served; a missing file is a 404, not a 500."""
    path = tmp_path / "runbook.md"
    path.write_text("# Ours\n\n## GatewayDown\n\ntext\n", encoding="utf-8")
    served = await make_gateway(runbook_path=path)
    assert 'id="gatewaydown"' in await (await served.get("/runbook")).text()
    missing = await make_gateway(runbook_path=tmp_path / "absent.md")
    assert (await missing.get("/runbook")).status == 404


def test_render_escapes_what_it_shows() -> None:
    """Markup in the runbook is shown, never interpreted."""
    page = render("## A <b>\n\n<script>x</script>\n")
    assert "<script>x" not in page
    assert "&lt;script&gt;" in page
    assert '<h2 id="a-b">A &lt;b&gt;</h2>' in page


def test_checkout_runbook_is_docs_runbook() -> None:
    """Without the setting the gateway serves the checkout's docs/runbook.md, the file the alerts link to."""
    assert RUNBOOK.resolve() == CHECKOUT_RUNBOOK
