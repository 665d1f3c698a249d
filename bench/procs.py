"""Child processes of a benchmark run: start, wait until they answer, account CPU, stop."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, Protocol

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PYTHON: Final = sys.executable


def _raise_nofile() -> None:
    # 1,000 streams need about 2,000 descriptors in the gateway (client side + upstream side).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Proc:
    """One child process with its output in a log file."""

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
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.PIPE if pipe_stdio else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdio else self._log,
            stderr=self._log,
            preexec_fn=_raise_nofile,
            text=pipe_stdio,
            bufsize=1 if pipe_stdio else -1,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def wait_http(self, url: str, *, timeout: float = 20.0) -> None:
        """Poll ``url`` until it answers 200; raise if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:g}s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far (from /proc/<pid>/stat)."""
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # Fields after "(comm) ": state is [0], utime [11], stime [12].
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


def compress_large_log(path: Path, *, limit: int = 1 << 20) -> Path:
    """Gzip a log over ``limit`` bytes (the gateway's access log grows by about 20 MB a run)."""
    if not path.exists() or path.stat().st_size <= limit:
        return path
    target = path.with_name(path.name + ".gz")
    with path.open("rb") as source, gzip.open(target, "wb", compresslevel=6) as sink:
        shutil.copyfileobj(source, sink)
    path.unlink()
    return target


def post_json(url: str, body: bytes, *, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking POST for control calls (admin endpoints, probes of the setup)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class BenchRun(Protocol):
    """What a section uses of the benchmark run (bench.run.Bench), so sections need not import it."""

    ns: argparse.Namespace
    sim: Proc
    urls: dict[str, str]
    servers: dict[str, Proc]

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], port: int, cwd: Path | None = None) -> Proc: ...

    @staticmethod
    def sim_url(proc: Proc) -> str: ...

    @staticmethod
    def proxy_url(proc: Proc) -> str: ...

    def _start_gateway(
        self,
        name: str,
        upstream: str,
        *,
        max_concurrency: int | None,
        upstreams: str | None = None,
        extra_env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> Proc: ...

    def _nonstream(
        self, target: str, concurrency: int, duration: float, *, expect_status: int = 200
    ) -> dict[str, Any]: ...

    def measure(self, scenario: str, target: str, rep: int, run: Any) -> dict[str, Any]: ...
