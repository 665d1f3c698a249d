"""The gateway's listening sockets, bound before anything starts, and the supervisor's check that a port is free.

Binding first means a gateway that cannot listen exits before it connects to Redis, takes a
probe lease or calls the upstream. The options are those of asyncio's ``create_server`` (what
aiohttp's ``TCPSite`` did): ``SO_REUSEADDR``, so connections of an earlier run left in TIME_WAIT
do not block a restart, and ``IPV6_V6ONLY``, so an IPv6 address does not also claim the IPv4 one.
"""

from __future__ import annotations

import socket


def bind(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """One bound socket per address of ``host`` (``""``: every interface); ``OSError`` if any cannot bind.

    ``reuse_port``: share the port with sockets that also set ``SO_REUSEPORT`` (the other workers).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # getaddrinfo may repeat an address
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def ensure_free(host: str, port: int) -> None:
    """Raise ``OSError`` (``EADDRINUSE``) if anything listens on the port, also a deployment sharing it through
    ``SO_REUSEPORT``: a socket bound without that option conflicts with every listener; TIME_WAIT does not count.
    """
    for sock in bind(host, port):
        sock.close()
