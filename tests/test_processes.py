"""monitoring/processes.py: the managed child process and the bounded poll, shared by monitoring, bench and tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitoring.processes import PYTHON, ManagedProcess, StackError, eventually, free_port, wait_until

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


async def test_wait_ready_then_stop(tmp_path: Path) -> None:
    """A child serving HTTP is ready once its URL answers 200; stop ends it with SIGTERM."""
    port = free_port()
    argv = [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    process = ManagedProcess("http", argv, tmp_path, port=port)
    try:
        await process.wait_ready(f"http://127.0.0.1:{port}/", within=20)
        assert process.running
        assert process.cpu_seconds() >= 0
    finally:
        process.stop()
    assert process.returncode == -15
    assert process.log_path == tmp_path / "http.log"


async def test_wait_ready_fails_at_once_with_the_log_when_the_child_exits(tmp_path: Path) -> None:
    """A child that exits while awaited ends the wait with its status and the tail of its log."""
    process = ManagedProcess("dies", [PYTHON, "-c", "print('boom'); raise SystemExit(3)"], tmp_path, log_name="x")
    started = time.monotonic()
    with pytest.raises(StackError, match=r"dies exited with status 3\n--- last 1 lines .*x\.log\)\n    boom"):
        await process.wait_ready("http://127.0.0.1:9/", within=20)
    assert time.monotonic() - started < 10


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    """stop waits the grace, then SIGKILLs; a second stop is a no-op."""
    process = ManagedProcess("stubborn", [PYTHON, "-c", STUBBORN], tmp_path, pipe_stdio=True)
    assert process.popen.stdout is not None
    assert process.popen.stdout.readline() == "up\n"  # its SIGTERM handler is in place
    started = time.monotonic()
    process.stop(grace=0.3)
    assert process.returncode == -9
    assert time.monotonic() - started < 5
    process.stop()


async def test_wait_until_quotes_the_last_error_on_timeout() -> None:
    """A check that keeps failing to connect times out with what it waited for and the last error."""

    async def check() -> bool:
        raise ConnectionRefusedError("refused")

    with pytest.raises(StackError, match=r"timed out after 0.1s waiting for the port \(last error: .*refused\)"):
        await wait_until(check, within=0.1, what="the port", interval=0.02)


async def test_eventually_returns_once_the_condition_holds_and_is_bounded() -> None:
    """eventually returns when the condition becomes true and raises after ``within`` when it never does."""
    calls = iter(range(10))
    await eventually(lambda: next(calls) == 3)
    assert next(calls) == 4
    with pytest.raises(StackError, match=r"timed out after 0\.05s"):
        await eventually(lambda: False, within=0.05)
