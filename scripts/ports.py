"""Free ports for the servers that tests, benchmarks and the demo start on loopback.

Ports are picked *below* the kernel's ephemeral range. A port the kernel handed out with ``bind(0)`` comes
from the same pool every client socket draws its local port from: once the server that owned it stops (a
restart test, a crashed node), any outgoing connection may take it, and the restarted server then fails
with "address already in use". Below the range only another server that picks ports the same way can
collide, and every check here binds the way the servers do (all addresses, ``SO_REUSEADDR``).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 20000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _high() -> int:
    return max(_LOW + 1000, min(32000, _ephemeral_start()))


def tcp_port_free(port: int) -> bool:
    """True if a server could listen on ``port`` on every address now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_tcp_port() -> int:
    """A TCP port nothing listens on, outside the range client sockets are given."""
    high = _high()
    for _ in range(200):
        port = random.randrange(_LOW, high)
        if tcp_port_free(port):
            return port
    raise OSError(f"no free TCP port in {_LOW}..{high}")


def free_udp_range(count: int) -> int:
    """The first of ``count`` consecutive free UDP ports, outside the range client sockets are given."""
    high = _high()
    for _ in range(50):
        start = random.randrange(_LOW, high - count)
        if all(_udp_port_free(port) for port in range(start, start + count)):
            return start
    raise OSError(f"no {count} consecutive free UDP ports in {_LOW}..{high}")
