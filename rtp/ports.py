"""Media sockets and the RTP port range: binding, allocation and non-blocking reads.

The one media module (with rtp/batch_io.py) that opens sockets. Both the per-call sessions
(rtp/engine.py) and the shared ports (rtp/mux.py) take their ports from one `PortRange`, so
neither reaches into the other's bookkeeping.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterator

MAX_DATAGRAM = 2048  # bytes read per datagram: above any G.711 packet and the Ethernet MTU
SOCKET_BUFFER = 256 * 1024  # receive buffer per socket: ~1 s of a 50 pps stream survives a stalled loop
# <linux/in.h>: send with DF set and ignore path-MTU estimates. Why: with the default
# (IP_PMTUDISC_WANT) an unconnected UDP socket's every datagram draws a fresh IP ID from
# the kernel's shared, hashed generator (RFC 6864 needs none for a datagram with DF set,
# and Linux then sends 0): `__ip_select_ident` was 2.2% of the B2BUA's CPU samples under
# perf at 1,500 calls, and is gone with DF. RTP is a few hundred bytes, far below any
# path's MTU.
_IP_MTU_DISCOVER = 10
_IP_PMTUDISC_PROBE = 3


class PortsExhausted(RuntimeError):
    """No free even RTP port (with its odd RTCP neighbour) left in the configured range."""


def read_datagrams(sock: socket.socket, limit: int) -> Iterator[tuple[bytes, tuple[str, int]]]:
    """Up to `limit` waiting datagrams from a non-blocking socket, then back to the loop.
    An OSError on one read (ICMP port unreachable reported late) costs that read only."""
    for _ in range(limit):
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue
        yield data, addr[:2]


def bind_socket(ip: str, port: int, buffer: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking UDP socket on (ip, port), DF set (see _IP_PMTUDISC_PROBE)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            if buffer > SOCKET_BUFFER:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        except OSError:
            pass
        if family == socket.AF_INET and sys.platform.startswith("linux"):
            try:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_PROBE)
            except OSError:
                pass
        sock.bind((ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


class PortRange:
    """The even/odd RTP/RTCP port pairs of `[server] rtp_ports` on `media_ip` (RFC 3550 §11)."""

    def __init__(self, media_ip: str, low: int, high: int) -> None:
        self.media_ip = media_ip
        self.low = low
        self.high = high
        self.in_use: set[int] = set()
        self._cursor = low

    @property
    def free_pairs(self) -> int:
        """Even/odd port pairs not in use (some may still be taken by other processes)."""
        return (self.high - self.low + 1) // 2 - len(self.in_use)

    def bind_pair(self, buffer: int = SOCKET_BUFFER, *, calls: int = 0) -> tuple[int, socket.socket, socket.socket]:
        """The next free pair, bound: (RTP port, RTP socket, RTCP socket); marked in use."""
        low, high = self.low, self.high
        pairs = (high - low + 1) // 2
        for _ in range(pairs):
            base = self._cursor
            self._cursor = base + 2 if base + 3 <= high else low
            if base in self.in_use:
                continue
            try:
                rtp = bind_socket(self.media_ip, base, buffer)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue  # another process holds it: try the next pair
                raise
            try:
                rtcp = bind_socket(self.media_ip, base + 1, buffer)
            except OSError as exc:
                rtp.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self.in_use.add(base)
            return base, rtp, rtcp
        raise PortsExhausted(
            f"no free RTP port pair in {low}-{high} on {self.media_ip}: "
            f"{len(self.in_use)} pairs in use by {calls} calls; widen [server] rtp_ports"
        )

    def release(self, base: int) -> None:
        self.in_use.discard(base)
