"""A real ``redis-server`` on a free loopback port, which tests may pause, kill and restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid

from monitoring.processes import find_tool, free_port


class RedisServer:
    """One ``redis-server`` child: no persistence, loopback only, always stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self.binary = find_tool("redis-server")
        self.port = free_port("127.0.0.1")
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        """The URL a gateway's GATEWAY_REDIS_URL takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def prefix() -> str:
        """A key prefix no other test uses, so tests share a server without seeing each other."""
        return f"test-{uuid.uuid4().hex[:12]}"

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def pause(self) -> None:
        """SIGSTOP: connections stay open and every call hangs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL: the server and everything in it are gone."""
        assert self.process is not None
        if self.paused:
            self.resume()
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop whatever state the server is in."""
        if self.process is not None and self.process.poll() is None:
            self.kill()
