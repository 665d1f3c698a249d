"""A real headless browser for the status page: Debian's chromium driven by Playwright.

Playwright cannot download its own browsers on these machines, so it drives
``/usr/bin/chromium`` (``scripts/setup --with-tools`` installs it); ``--no-sandbox``
because the tests run as root.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright

CHROMIUM: Final = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed on exit; a missing binary is an error naming the fix, never a skip."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"no chromium at {CHROMIUM}: run scripts/setup --with-tools (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PageWatch:
    """Everything a page complained about: console errors and warnings, script errors, failed requests."""

    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        """Start recording ``page``'s complaints (CSP violations arrive as console errors)."""
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("requestfailed", self._failed)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        self.failed.append(f"{request.url}: {request.failure}")

    def complaints(self) -> list[str]:
        """All of them, in one list for one assertion."""
        return [*self.console, *self.errors, *self.failed]
