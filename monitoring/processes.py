"""Child processes that are always stopped, their environment, free loopback ports, and bounded polling.

The one home of these helpers for the monitoring stack, the benchmark and the tests:
bench and tests import them from here (monitoring is the only one of the three that
ships as a tool of its own, ``scripts/alert-drill``, and depends on neither of the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp

T = TypeVar("T")

# Errors that mean "not up yet" while polling a service that is starting.
NOT_YET: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError)


class StackError(RuntimeError):
    """A part of the stack did not start or did not behave as expected; the message says which."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (callers retry if someone takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any ``GATEWAY_*`` variable, plus ``overrides``.

    A child gateway must see only the settings it is given, never the caller's API keys
    or real upstream.
    """
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, **overrides}


def find_tool(*names: str) -> str:
    """Absolute path of the first of ``names`` on PATH."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    raise StackError(f"{' or '.join(names)} not found on PATH: run scripts/setup --with-tools (as root)")


async def wait_until(check: Callable[[], Awaitable[T | None]], *, within: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns a value other than None (or False); give up after ``within`` seconds.

    Connection errors count as "not yet" and the last one is quoted in the
    ``StackError`` raised on timeout; a ``StackError`` from ``check`` ends the wait at once.
    """
    deadline = time.monotonic() + within
    last_error = ""
    while True:
        try:
            result = await check()
        except NOT_YET as exc:
            last_error = f" (last error: {type(exc).__name__}: {exc})"
        else:
            if result is not None and result is not False:
                return result
        if time.monotonic() >= deadline:
            raise StackError(f"timed out after {within:g}s waiting for {what}{last_error}")
        await asyncio.sleep(interval)


async def eventually(condition: Callable[[], bool], *, within: float = 2.0, step: float = 0.01) -> None:
    """Return once ``condition()`` is true; fail with TimeoutError after ``within`` seconds.

    For state owned by another object in this process, with no event to wait on;
    ``wait_until`` is the variant for checks that do I/O.
    """
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the state lives in other objects, nothing to await
            await asyncio.sleep(step)


class ManagedProcess:
    """One child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process, its output going to the log file."""
        with self.log_path.open("wb") as log:
            self._popen = subprocess.Popen(  # noqa: S603 - argv is built by the stack, never from input
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )

    @property
    def pid(self) -> int | None:
        """The process id once started."""
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs (or before it started)."""
        return None if self._popen is None else self._popen.poll()

    @property
    def running(self) -> bool:
        """True between start and exit."""
        return self._popen is not None and self._popen.poll() is None

    def ensure_running(self) -> None:
        """Raise ``StackError`` with the log's tail if the process has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise StackError(f"{self.name} exited with status {self._popen.returncode}\n{self.log_tail()}")

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds (polling, the event loop stays free), then SIGKILL."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            popen.terminate()
        deadline = time.monotonic() + grace
        while popen.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - no event for a child's exit
            await asyncio.sleep(0.05)
        if popen.poll() is None:
            self.kill()

    def kill(self) -> None:
        """SIGKILL and reap; safe to call at any time, also outside an event loop."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of output, indented, for error messages."""
        tail = self.log_text().splitlines()[-lines:]
        header = f"--- last {len(tail)} lines of {self.name} output ({self.log_path})"
        return "\n".join([header, *("    " + line for line in tail)])
