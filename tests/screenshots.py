"""Screenshots of the status page for the README: healthy, phone, one route down, all down, healed, stale.

Runs the simulator with three routes and a gateway on loopback, sends steady traffic
so the sparklines have something to draw (sampled every 250 ms instead of 5 s, so a
minute of traffic fills most of the ring; the page says so), breaks one route, then
all, through the simulator's faults, and photographs the page at 1280 px each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.simulator import SimFaults, SimOptions, Simulator
from tests.browser_support import PageWatch, chromium
from tests.gateway_support import chat_body, make_settings

ROUTES: Final = ("eu-proxy", "us-proxy", "paid")
# A little first-token latency per route, so the quantiles and sparklines differ.
PACE: Final = {"eu-proxy": 0.08, "us-proxy": 0.03, "paid": 0.15}
BLOCKED: Final = SimFaults(http_status=403, http_body="cloudflare")
DOWN: Final = SimFaults(http_status=503)


async def _traffic(base: str, stop: asyncio.Event) -> None:
    """About 20 chat requests a second from four callers until ``stop``."""
    async with aiohttp.ClientSession() as session:

        async def caller() -> None:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(f"{base}/v1/chat/completions", json=chat_body()) as response:
                        await response.read()
                await asyncio.sleep(0.2)

        await asyncio.gather(*(caller() for _ in range(4)))


async def take(out: Path) -> None:
    """Write ``status-healthy.png`` (and ``status-phone.png``), ``status-route-down.png``, ``status-all-down.png``,
    ``status-healed-timeline.png`` (every route healed: the timeline tells the story) and ``status-stale.png``."""
    async with Simulator(SimOptions(chunk_delay=0.01)) as sim:
        for name, delay in PACE.items():
            sim.set_faults(SimFaults(slow_first_token=delay, ratio=0.5), route=name)
        upstreams = json.dumps([{"name": name, "url": sim.route_url(name)} for name in ROUTES])
        settings = make_settings(
            sim.url,
            upstreams=upstreams,
            probe_enabled=True,
            probe_interval=2,
            probe_unhealthy_interval=1,
            probe_unhealthy_threshold=1,
            breaker_fail_max=3,
            breaker_reset_seconds=60,
            ui_sample_seconds=0.25,
            ui_refresh_seconds=0.5,
        )
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        stop = asyncio.Event()
        stopped = False
        traffic = asyncio.create_task(_traffic(base, stop))
        try:
            async with chromium() as browser:
                context = await browser.new_context(viewport={"width": 1280, "height": 720})
                watch = PageWatch()
                page = watch.attach(await context.new_page())
                await asyncio.sleep(30)
                await page.goto(f"{base}/")
                await page.screenshot(path=out / "status-healthy.png", full_page=True)
                phone = watch.attach(
                    await (await browser.new_context(viewport={"width": 390, "height": 844})).new_page()
                )
                await phone.goto(f"{base}/")
                await phone.screenshot(path=out / "status-phone.png")
                await phone.close()
                sim.set_faults(BLOCKED, route="us-proxy")
                await asyncio.sleep(10)
                await page.screenshot(path=out / "status-route-down.png", full_page=True)
                sim.set_faults(DOWN, route="eu-proxy")
                sim.set_faults(DOWN, route="paid")
                await asyncio.sleep(8)
                await page.screenshot(path=out / "status-all-down.png", full_page=True)
                for name, delay in PACE.items():
                    sim.set_faults(SimFaults(slow_first_token=delay, ratio=0.5), route=name)
                await asyncio.sleep(8)
                await page.screenshot(path=out / "status-healed-timeline.png", full_page=True)
                if watch.complaints():
                    raise RuntimeError(f"the page complained: {watch.complaints()}")
                stop.set()
                await traffic
                await runner.cleanup()  # the gateway stops answering: the page turns stale
                stopped = True
                await page.wait_for_selector("#state.state-stale", timeout=5000)
                await page.screenshot(path=out / "status-stale.png")
        finally:
            stop.set()
            await traffic
            if not stopped:
                await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")))
