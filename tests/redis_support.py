"""A real ``redis-server`` on a free loopback port, which tests may pause, kill and restart."""

from __future__ import annotations

import asyncio
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


class RedisCutter:
    """A loopback TCP relay in front of Redis that one gateway uses, so a test can cut only that one off."""

    def __init__(self, target_port: int, *, delay: float = 0.0) -> None:
        self._target_port = target_port
        self._delay = delay  # added to every chunk relayed: a slow network (or a slow Redis)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.cut_off = False
        self.holding = False  # subscriptions get nothing (bytes held, socket open) while set
        self.port = 0

    @property
    def url(self) -> str:
        """The URL the cut-off-able gateway uses."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones until :meth:`restore`."""
        self.cut_off = True
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        """Relay again."""
        self.cut_off = False

    def hold_subscriptions(self) -> None:
        """Stop delivering anything to subscribed connections (a silent pub/sub), keeping them open."""
        self.holding = True

    def release_subscriptions(self) -> None:
        """Deliver to subscriptions again (what was held comes next)."""
        self.holding = False

    async def stop(self) -> None:
        """Close everything."""
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        subscriber = [False]  # this connection sent SUBSCRIBE: hold_subscriptions applies to it

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_client: bool) -> None:
            held: list[bytes] = []
            try:
                while data := await reader.read(65536):
                    if self._delay:
                        await asyncio.sleep(self._delay)
                    if not to_client and b"SUBSCRIBE" in data.upper():
                        subscriber[0] = True
                    if to_client and subscriber[0] and self.holding:
                        held.append(data)
                        continue
                    writer.write(b"".join([*held, data]))
                    held.clear()
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(
            pump(client_reader, server_writer, to_client=False), pump(server_reader, client_writer, to_client=True)
        )
        self._writers -= {client_writer, server_writer}
