"""``serve --workers N``: a supervisor and N gateway processes sharing one port.

Each worker is a full gateway (``serve --as-worker``) that binds with ``SO_REUSEPORT``, so the
kernel spreads connections across them. The supervisor only watches: it restarts a worker that
dies (with a growing pause if it keeps dying young), forwards SIGTERM/SIGINT so every worker
drains gracefully, and exits 0 when all of them did.

It fails loudly instead of looking healthy while nothing is served: it exits 1 before starting
any worker if the port is taken, and stops everything and exits 1 as soon as a worker cannot
listen (``EXIT_CANNOT_LISTEN``). Because ``SO_REUSEPORT`` would let a second deployment share the
port silently, the supervisor holds an exclusive ``flock`` on a lock file named after host and port
for its lifetime (two deployments started together, neither listening yet), and before starting
the workers binds the port without ``SO_REUSEPORT`` (a listener of any kind: another container, a
plain ``serve``).

Metrics: the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any
worker starts; every worker writes its samples there and answers ``/metrics`` with the sum over
all workers, live and dead (counters never go back when a worker is replaced).
Workers agree on upstream health through Redis (``GATEWAY_REDIS_URL`` is required for N > 1).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

from prometheus_client import multiprocess

from gateway import listen

log = logging.getLogger(__name__)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
EXIT_CANNOT_LISTEN: Final = 3  # a worker's: neither 1 (an unhandled error) nor 2 (a bad setting)
_POLL_SECONDS: Final = 0.1
_YOUNG_SECONDS: Final = 5.0  # a worker that dies sooner than this is restarted after a pause
_RESTART_PAUSE_MAX: Final = 10.0
# Beyond the drain grace, before a worker that does not exit is killed (a loaded host closes slowly).
_STOP_MARGIN: Final = 10.0


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0


class Supervisor:
    """Starts, watches and stops the workers; :meth:`run` returns the exit code."""

    def __init__(self, command: Sequence[str], *, workers: int, grace: float, host: str, port: int) -> None:
        self._command = list(command)
        self._count = workers
        self._grace = grace
        self._host, self._port = host, port
        self._stopping = False
        self._failed = False  # a worker could not listen: exit 1 whatever the others do
        self._workers: list[_Worker] = []
        self._metrics_dir = ""
        self._owns_metrics_dir = MULTIPROC_ENV not in os.environ

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (or a worker cannot listen), then drain every worker."""
        try:
            lock = claim_port(self._host, self._port)
        except OSError as exc:
            log.error("cannot listen, exiting address=%s:%d reason=%r", self._host, self._port, exc.strerror)
            return 1
        try:
            return self._supervise()
        finally:
            os.close(lock)

    def _supervise(self) -> int:
        self._metrics_dir = _fresh_metrics_dir()
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._workers = [self._spawn(index) for index in range(self._count)]
            log.info("supervisor started workers=%d pids=%s", self._count, [w.process.pid for w in self._workers])
            while not self._stopping:
                time.sleep(_POLL_SECONDS)
                for position, worker in enumerate(self._workers):
                    if worker.process.poll() is None or self._stopping:
                        continue
                    if worker.process.returncode == EXIT_CANNOT_LISTEN:
                        log.error("a worker cannot listen, stopping every worker address=%s:%d", self._host, self._port)
                        self._stopping = self._failed = True
                    else:
                        self._workers[position] = self._replace(worker)
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._owns_metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _spawn(self, index: int) -> _Worker:
        env = {**os.environ, MULTIPROC_ENV: self._metrics_dir, "GATEWAY_WORKER_INDEX": str(index)}
        return _Worker(index, subprocess.Popen([*self._command], env=env))  # noqa: S603 - our own interpreter and flags

    def _replace(self, worker: _Worker) -> _Worker:
        pid, code = worker.process.pid, worker.process.returncode
        multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]  # live gauges leave the sums
        lived = time.monotonic() - worker.started
        quick = worker.quick_deaths + 1 if lived < _YOUNG_SECONDS else 0
        pause = min(0.5 * 2 ** (quick - 1), _RESTART_PAUSE_MAX) if quick else 0.0
        log.warning(
            "worker died, restarting index=%d pid=%d code=%s pause_seconds=%.1f", worker.index, pid, code, pause
        )
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(_POLL_SECONDS)
        if self._stopping:
            return worker  # stays dead; _stop_all does not count it
        replacement = self._spawn(worker.index)
        replacement.quick_deaths = quick
        return replacement

    def _stop_all(self) -> int:
        running = [worker for worker in self._workers if worker.process.poll() is None]
        for worker in running:
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace + _STOP_MARGIN
        codes = []
        for worker in running:
            try:
                codes.append(worker.process.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                log.error("worker did not drain in time, killing index=%d pid=%d", worker.index, worker.process.pid)
                worker.process.kill()
                codes.append(worker.process.wait())
        log.info("supervisor stopped codes=%s", codes)
        # A worker still starting has no requests yet; SIGTERM's default action is a clean stop for it.
        return 0 if not self._failed and all(code in (0, -signal.SIGTERM) for code in codes) else 1


def claim_port(host: str, port: int) -> int:
    """Hold this host and port for one deployment: a locked file descriptor, or ``OSError`` saying why not.

    The lock is released with the process however it ends, so a restart is never blocked by a
    stale file; the file itself stays, empty.
    """
    name = re.sub(r"[^A-Za-z0-9.-]", "_", host) or "all"
    path = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"flowgpt-gateway-{name}-{port}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(errno.EADDRINUSE, f"another serve --workers holds the port (lock file {path})") from None
    try:
        listen.ensure_free(host, port)
    except OSError:
        os.close(fd)
        raise
    return fd


def _fresh_metrics_dir() -> str:
    """The directory named by PROMETHEUS_MULTIPROC_DIR without its metric files, or a new temporary one."""
    configured = os.environ.get(MULTIPROC_ENV)
    if not configured:
        return tempfile.mkdtemp(prefix="flowgpt-gateway-metrics-")
    os.makedirs(configured, exist_ok=True)
    # Files of an earlier run would be summed in; anything else there is not ours to delete.
    for path in Path(configured).glob("*.db"):
        path.unlink(missing_ok=True)
    return configured


def worker_command(flags: Sequence[str]) -> list[str]:
    """How the supervisor starts one worker: this interpreter, ``serve --as-worker`` and the given flags."""
    return [sys.executable, "-m", "gateway", "serve", "--as-worker", *flags]
