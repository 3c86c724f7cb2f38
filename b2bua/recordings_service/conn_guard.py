"""Bounds on open HTTP connections, in total and per source address, at accept time.

aiohttp has no connection cap: a flood of connections (or slowloris clients that never
finish their headers) would hold as many file descriptors as the process may open, and
the media sockets need them. aiohttp already closes a connection that does not complete a
request within `keepalive_timeout` (armed at connection_made since aiohttp 3.14), so the
time bound is aiohttp's; this module adds only the count bound, which aiohttp lacks.

`ConnectionGuard.factory(runner.server)` wraps aiohttp's protocol factory (the low-level
`web.Server`, which aiohttp documents as a factory for `loop.create_server`). Each new
connection is admitted or closed at once, before aiohttp sees a byte of it: no HTTP is
parsed here. Refusals are counted by reason (for /metrics) and reported by source to the
hostile-traffic summary, never logged one line per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: `reason` labels of b2bua_http_refused_total.
REFUSED_TOTAL = "max-connections"
REFUSED_PER_IP = "per-ip"
REASONS = (REFUSED_TOTAL, REFUSED_PER_IP)


class ConnectionGuard:
    """Counts open connections; `admit` says whether one more may open (sans-IO)."""

    def __init__(self, max_connections: int, max_per_ip: int,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.open = 0
        self._per_ip: dict[str, int] = {}
        self.refused: dict[str, int] = dict.fromkeys(REASONS, 0)
        #: (source ip, reason) of each refusal: the hostile summary, not a log line.
        self.on_refused = on_refused

    def admit(self, host: str) -> bool:
        if self._per_ip.get(host, 0) >= self.max_per_ip:
            return self._refuse(host, REFUSED_PER_IP)
        if self.open >= self.max_connections:
            return self._refuse(host, REFUSED_TOTAL)
        self.open += 1
        self._per_ip[host] = self._per_ip.get(host, 0) + 1
        return True

    def release(self, host: str) -> None:
        self.open -= 1
        left = self._per_ip.get(host, 1) - 1
        if left > 0:
            self._per_ip[host] = left
        else:  # forgotten at zero, so spoofed sources cannot grow the table
            self._per_ip.pop(host, None)

    def _refuse(self, host: str, reason: str) -> bool:
        self.refused[reason] += 1
        if self.on_refused is not None:
            self.on_refused(host, reason)
        return False

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server` that guards `inner`'s connections."""
        return lambda: _Guarded(self, inner)


class _Guarded(asyncio.Protocol):
    """Admits a connection and hands it to aiohttp's handler, or closes it unread.

    Every callback is passed through unchanged; the handler never knows it is wrapped.
    """

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make_inner = inner
        self._inner: asyncio.Protocol | None = None
        self._host = ""

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        self._host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        if not self._guard.admit(self._host):
            transport.abort()  # at once, unread: a refused connection costs nothing more
            return
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._guard.release(self._host)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
