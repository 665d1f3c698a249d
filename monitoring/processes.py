"""Child processes that are always stopped, their environment, free loopback ports, and bounded polling.

The one home of these helpers for the monitoring stack, the benchmark and the tests:
bench and tests import them from here (monitoring is the only one of the three that
ships as a tool of its own, ``scripts/alert-drill``, and depends on neither of the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp

T = TypeVar("T")

PYTHON: Final = sys.executable
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

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

    The one bounded poll. Connection errors count as "not yet" and the last one is quoted
    in the ``StackError`` raised on timeout; a ``StackError`` from ``check`` ends the wait at once.
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
    """``wait_until`` for state owned by another object in this process, with no event to wait on."""

    async def check() -> bool:
        return condition()

    await wait_until(check, within=within, what="the condition to hold", interval=step)


def _raise_nofile() -> None:
    # 1,000 streams need about 2,000 descriptors in a gateway (client side + upstream side).
    # Raised here, before the fork, so children inherit it (a preexec_fn is unsafe with threads).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class ManagedProcess:
    """One child process, started on construction, its output in ``<log_dir>/<name>.log``.

    ``stop`` sends SIGTERM, waits a bounded grace, then SIGKILLs. With ``pipe_stdio`` the
    caller talks to it over text lines on stdin and stdout (stderr still goes to the log).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,  # the whole environment; None inherits ours
        port: int = 0,
        cwd: Path | None = None,
        pipe_stdio: bool = False,
        log_name: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = log_dir / f"{log_name or name}.log"
        _raise_nofile()
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.popen: subprocess.Popen[Any] = subprocess.Popen(  # noqa: S603 - argv is built by the caller, never from input
                self.argv,
                env=None if env is None else dict(env),
                cwd=cwd,
                stdin=subprocess.PIPE if pipe_stdio else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdio else log,
                stderr=log,
                text=pipe_stdio,
                bufsize=1 if pipe_stdio else -1,
            )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.popen.poll()

    @property
    def running(self) -> bool:
        """True until it exits."""
        return self.popen.poll() is None

    def ensure_running(self) -> None:
        """Raise ``StackError`` with the log's tail if the process has exited."""
        if self.popen.poll() is not None:
            raise StackError(f"{self.name} exited with status {self.popen.returncode}\n{self.log_tail()}")

    async def wait_ready(self, url: str, *, within: float = 20.0) -> None:
        """Poll ``url`` until it answers 200; ``StackError`` at once if the process exits, or after ``within``."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

            async def ready() -> bool:
                self.ensure_running()
                async with session.get(url) as response:
                    return response.status == 200

            await wait_until(ready, within=within, what=f"{self.name} to answer {url}", interval=0.1)

    def wait_http(self, url: str, *, timeout: float = 20.0) -> None:
        """``wait_ready`` for a blocking caller (the benchmark's driver), which has no event loop running."""
        asyncio.run(self.wait_ready(url, within=timeout))

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far (from /proc/<pid>/stat)."""
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # Fields after "(comm) ": state is [0], utime [11], stime [12].
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; idempotent.

        Blocking: from an event loop, ``await asyncio.to_thread(process.stop)``.
        """
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        """SIGKILL and reap; safe to call at any time, also outside an event loop."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

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


def compress_large_log(path: Path, *, limit: int = 1 << 20) -> Path:
    """Gzip a log over ``limit`` bytes (a benchmarked gateway's access log grows by about 20 MB a run)."""
    if not path.exists() or path.stat().st_size <= limit:
        return path
    target = path.with_name(path.name + ".gz")
    with path.open("rb") as source, gzip.open(target, "wb", compresslevel=6) as sink:
        shutil.copyfileobj(source, sink)
    path.unlink()
    return target
