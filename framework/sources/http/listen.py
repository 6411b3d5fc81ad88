"""The node's HTTP socket, bound before anything else starts.

uvicorn binds its port when its server starts, which in a node comes after the Kafka consumer has joined
its group: a node whose port was taken then took partitions from the live nodes (two rebalances) on its
way out, and logged "serving on :0" for an ephemeral port. Binding first fails such a start before any
side effect, and tells the real port. The socket is handed to uvicorn (`Server.serve(sockets=...)`).
"""

from __future__ import annotations

import socket


class BindError(Exception):
    """The address cannot be bound; the message is uvicorn's wording for the same failure."""


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on `host`:`port` (0: a free port): IPv6 when `host` holds a colon, else IPv4
    (a name such as `localhost` binds its IPv4 address), as uvicorn's own `bind_socket`. `backlog` is
    uvicorn's default."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        why = (exc.strerror or str(exc)).lower()
        raise BindError(f"error while attempting to bind on address {(host, port)!r}: {why}") from None
    sock.setblocking(False)
    return sock
