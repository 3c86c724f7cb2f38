"""SIP over UDP and TCP: the one SIP module that owns sockets (RFC 3261 §18).

Everything above this module is sans-IO: it takes bytes and a `Peer` and returns bytes
to send to a `Peer`. This adapter binds UDP and TCP on the same host:port (RFC 3261
§18.2.1 has a server listen on both), frames TCP streams with `StreamFramer`
(Content-Length, RFC 3261 §18.3), answers RFC 5626 §3.5.1 CRLF keep-alives, and
defends itself: connection caps overall and per source IP, an idle timeout, a deadline
for each message to finish arriving (slowloris), and bounded send buffers.

TCP slots are for phones and trunks, not strangers (issue 16: 16 addresses held all
1,024 slots with a CRLF every 5 s). An inbound connection is *new* until it sends a SIP
message the layer above could parse (it says so with `heard()`), and must do so within
`hello_timeout`; it is a *stranger* until the layer above vouches for its source (a
registered phone or a trunk, `heard(peer, trusted=True)`). Only a vouched-for
connection's keep-alives (and our own writes) count as activity; a stranger's idle limit
is `stranger_idle_timeout`, counted from its last SIP message. When the table is full a
new connection evicts the longest-idle stranger rather than being refused. Errors on
the wire are logged, never raised into the caller: a bad peer costs its own
connection, not the server.

It works on any asyncio loop; choosing uvloop is the caller's business.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

from b2bua.message import SipParseError, StreamFramer
from b2bua.peer import Peer

#: UDP receive buffer to ask for: a burst of REGISTERs/INVITEs (a few KB each) while the
#: loop is busy must queue in the kernel, not drop; Linux caps it at net.core.rmem_max.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
#: Accepted TCP connections in all: each holds a socket and up to a message of buffer;
#: an office PBX needs tens, so this only bites a flood.
MAX_TCP_CONNECTIONS = 1024
#: Accepted TCP connections from one source IP: a phone keeps one flow (RFC 5626 §3),
#: a NAT'd office a few dozen; more from one address is a flood.
MAX_TCP_CONNECTIONS_PER_IP = 64
#: A new inbound connection must send a SIP message within this long (CRLFs don't count).
TCP_HELLO_TIMEOUT = 5.0
#: An inbound connection whose source was never vouched for (not a registered phone's or
#: a trunk's address) is closed this long after its last SIP message; its keep-alives do
#: not count. A phone registers within a second of connecting, so it is vouched for long
#: before this.
TCP_STRANGER_IDLE_TIMEOUT = 30.0
#: Close a TCP connection with no bytes either way for this long: RFC 5626 §4.4.1
#: clients send CRLF keep-alives every 95-120 s, so live flows survive and dead ones go.
TCP_IDLE_TIMEOUT = 300.0
#: A message must finish arriving this long after its first byte: a peer trickling a
#: byte a second, or never sending the promised body, must not hold a slot (slowloris).
TCP_MESSAGE_TIMEOUT = 10.0
#: Give up on an outgoing TCP connect after this long: well inside Timer B/F (64*T1 =
#: 32 s, RFC 3261 §17.1.1.2), so the transaction still times out on its own clock.
TCP_CONNECT_TIMEOUT = 10.0
#: Bytes waiting to go to one TCP peer (unwritten, or queued while connecting) before the
#: connection is dropped: a peer that does not read must not grow our memory.
MAX_TCP_SEND_BUFFER = 1024 * 1024
#: Listen backlog: how many finished handshakes may wait for the loop to accept them.
TCP_LISTEN_BACKLOG = 128
#: With port 0, UDP picks an ephemeral port that TCP may find taken; retry this often.
EPHEMERAL_BIND_ATTEMPTS = 16
#: The answer to a double-CRLF keep-alive ping, on the same connection (RFC 5626 §3.5.1).
PONG = b"\r\n"
#: A STUN message carries this cookie at bytes 4-8 (RFC 5389 §6); RFC 5626 §4.4.2 UDP
#: keep-alives are STUN, which is not SIP and is dropped here.
STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"

_log = logging.getLogger(__name__)

Key = tuple[str, int]


def _normalise_host(host: str) -> str:
    """One spelling per address, so "[::1]", "::1" and "0::1" find the same connection."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _key(host: str, port: int) -> Key:
    return (_normalise_host(host), port)


def _is_keepalive_datagram(data: bytes) -> bool:
    """Empty, CRLF-only (RFC 5626 §3.5.1 style) or STUN (RFC 5626 §4.4.2): not SIP."""
    if not data.strip(b"\r\n \t"):
        return True
    return len(data) >= 20 and data[0] < 4 and data[4:8] == STUN_MAGIC_COOKIE


class SipTransport:
    """UDP and TCP listeners on one host:port, and the connections they carry.

    `on_message(data, peer)` receives every complete SIP message (one datagram, or one
    framed TCP message) with the `Peer` to answer; `send(data, peer)` answers over UDP
    or over the TCP connection that peer already has (RFC 3261 §18.2.2: responses go
    back on the connection the request came on), opening one if none is open.
    The keyword bounds default to the module constants; tests shorten them.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[bytes, Peer], None],
        log: logging.Logger | None = None,
        *,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
        message_timeout: float = TCP_MESSAGE_TIMEOUT,
        connect_timeout: float = TCP_CONNECT_TIMEOUT,
        max_connections: int = MAX_TCP_CONNECTIONS,
        max_connections_per_ip: int = MAX_TCP_CONNECTIONS_PER_IP,
        max_send_buffer: int = MAX_TCP_SEND_BUFFER,
        udp_receive_buffer: int = UDP_RECEIVE_BUFFER,
        hello_timeout: float = TCP_HELLO_TIMEOUT,
        stranger_idle_timeout: float = TCP_STRANGER_IDLE_TIMEOUT,
        hostile: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.on_message = on_message
        self.log = log or _log
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.max_send_buffer = max_send_buffer
        self.udp_receive_buffer = udp_receive_buffer
        self.hello_timeout = hello_timeout
        self.stranger_idle_timeout = stranger_idle_timeout
        #: (source ip, kind, now) of hostile events, summarised rather than logged each
        #: (HostileSummary.count); without it they are logged at DEBUG.
        self.hostile = hostile
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._local_port = 0
        self._stopping = False
        #: Open connections by the (host, port) they reach, ours and theirs alike.
        self._connections: dict[Key, _TcpConnection] = {}
        #: Every live connection, so stop() can close the unkeyed ones too.
        self._all: set[_TcpConnection] = set()
        #: Accepted connections per source IP, for MAX_TCP_CONNECTIONS_PER_IP.
        self._inbound_per_ip: dict[str, int] = {}
        self._inbound = 0
        #: Outgoing connects under way, with what to send once connected.
        self._connecting: dict[Key, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle

    @property
    def local_port(self) -> int:
        """The bound port (the ephemeral one when constructed with port 0); 0 before start()."""
        return self._local_port

    async def start(self) -> None:
        """Bind UDP and TCP on host:port; raises OSError if either cannot be bound."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        infos = await self._loop.getaddrinfo(
            self.host.strip("[]"), self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, address = infos[0]
        attempts = EPHEMERAL_BIND_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            udp_sock = self._udp_socket(family, address)
            try:
                tcp_sock = self._tcp_socket(family, (address[0], udp_sock.getsockname()[1], *address[2:]))
            except OSError as exc:
                udp_sock.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue
                raise
            break
        self._local_port = udp_sock.getsockname()[1]
        self._udp, _ = await self._loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp_sock)
        self._server = await self._loop.create_server(
            lambda: _TcpConnection(self, inbound=True), sock=tcp_sock, backlog=TCP_LISTEN_BACKLOG
        )
        self.log.info("transport event=listening host=%s port=%d udp+tcp", self.host, self._local_port)

    def _udp_socket(self, family: int, address: tuple) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.udp_receive_buffer)
            got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            # Linux reports double what it grants (bookkeeping overhead, socket(7)).
            self.log.info("transport event=udp-rcvbuf asked=%d got=%d", self.udp_receive_buffer, got)
            if family == socket.AF_INET6:
                # Plain IPv6 peers only: a dual-stack socket would report IPv4 peers as
                # ::ffff:a.b.c.d, which other layers would not recognise.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _tcp_socket(self, family: int, address: tuple) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if hasattr(socket, "SO_REUSEADDR") and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                # POSIX: rebind at once after a restart despite TIME_WAIT connections.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(TCP_LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        """Close the listeners and every connection; pending sends are dropped."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self._all):
            connection.close("stopping")
        self._connecting.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let connection_lost callbacks run
        self.log.info("transport event=stopped port=%d", self._local_port)

    # -- sending

    def send(self, data: bytes, peer: Peer) -> None:
        """Send one message to `peer`; failures are logged, never raised (RFC 3261 §18)."""
        if self._stopping or self._loop is None:
            self.log.warning("transport event=send-dropped reason=not-running to=%s:%s", peer.host, peer.port)
            return
        transport = peer.transport.lower()
        if transport == "udp":
            self._send_udp(data, peer)
        elif transport == "tcp":
            self._send_tcp(data, peer)
        else:
            self.log.warning("transport event=send-dropped reason=unsupported transport=%s", peer.transport)

    def _send_udp(self, data: bytes, peer: Peer) -> None:
        if self._udp is None:
            return
        if not _is_ip_literal(peer.host):
            self._spawn(self._resolve_and_send_udp(data, peer))
            return
        try:
            self._udp.sendto(data, (peer.host.strip("[]"), peer.port))
        except (OSError, ValueError) as exc:
            self.log.warning("transport event=send-failed udp to=%s:%d reason=%r", peer.host, peer.port, str(exc))

    async def _resolve_and_send_udp(self, data: bytes, peer: Peer) -> None:
        """A host name (a trunk's, say) is resolved off the loop's critical path."""
        assert self._loop is not None
        family = self._udp.get_extra_info("socket").family if self._udp else 0
        try:
            infos = await self._loop.getaddrinfo(peer.host, peer.port, family=family, type=socket.SOCK_DGRAM)
        except OSError as exc:
            self.log.warning("transport event=send-failed udp to=%s:%d reason=%r", peer.host, peer.port, str(exc))
            return
        if self._udp is not None and infos:
            self._send_udp(data, Peer("udp", infos[0][4][0], peer.port))

    def _send_tcp(self, data: bytes, peer: Peer) -> None:
        key = _key(peer.host, peer.port)
        queued = self._connecting.get(key)
        if queued is not None:
            if sum(map(len, queued)) + len(data) > self.max_send_buffer:
                self.log.warning("transport event=send-dropped reason=queue-full to=%s:%d", peer.host, peer.port)
            else:
                queued.append(data)
            return
        connection = self._connections.get(key)
        if connection is not None:
            connection.write(data)
            return
        self._connecting[key] = [data]
        self._spawn(self._connect(peer, key))

    async def _connect(self, peer: Peer, key: Key) -> None:
        assert self._loop is not None
        try:
            _, connection = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _TcpConnection(self, inbound=False), peer.host.strip("[]"), peer.port
                ),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            dropped = self._connecting.pop(key, [])
            self.log.warning(
                "transport event=connect-failed tcp to=%s:%d reason=%r dropped=%d",
                peer.host, peer.port, str(exc) or type(exc).__name__, len(dropped),
            )
            return
        queued = self._connecting.pop(key, [])
        if connection.closed:  # refused (stopping) or already gone: don't index a corpse
            self.log.warning("transport event=send-dropped reason=closed to=%s:%d dropped=%d", peer.host, peer.port, len(queued))
            return
        connection.alias(key)
        for data in queued:
            connection.write(data)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- receiving

    def deliver(self, data: bytes, peer: Peer) -> None:
        """Hand one message up; a bug above must cost that message, not the transport."""
        try:
            self.on_message(data, peer)
        except Exception:
            self.log.exception("transport event=handler-error from=%s:%s:%d", peer.transport, peer.host, peer.port)

    def heard(self, peer: Peer, *, trusted: bool = False) -> None:
        """The layer above parsed a SIP message from TCP `peer` (and, with `trusted`,
        knows its source: a registered phone or a trunk). Keeps that connection's slot."""
        if peer.transport.lower() != "tcp":
            return
        connection = self._connections.get(_key(peer.host, peer.port))
        if connection is None or connection.closed:
            return
        connection.spoke = True
        connection.trusted = connection.trusted or trusted
        connection.last_activity = connection.loop.time()

    def _hostile(self, host: str, kind: str) -> None:
        if self.hostile is not None and self._loop is not None:
            self.hostile(host, kind, self._loop.time())
        self.log.debug("transport event=%s from=%s", kind, host)

    # -- connection bookkeeping (called by _TcpConnection)

    def admit(self, connection: _TcpConnection) -> bool:
        """Register a new connection; False if an inbound one breaks a cap (caller closes it)."""
        if self._stopping:
            return False
        host = connection.peer.host
        if connection.inbound:
            if self._inbound_per_ip.get(host, 0) >= self.max_connections_per_ip:
                self._hostile(host, "tcp-refused-per-ip")
                return False
            if self._inbound >= self.max_connections and not self._evict_a_stranger():
                self.log.warning("transport event=tcp-refused reason=max-connections from=%s", host)
                return False
            self._inbound += 1
            self._inbound_per_ip[host] = self._inbound_per_ip.get(host, 0) + 1
        self._all.add(connection)
        connection.alias(_key(host, connection.peer.port))
        return True

    def _evict_a_stranger(self) -> bool:
        """Table full: close the longest-idle inbound connection not vouched for."""
        strangers = [c for c in self._all if c.inbound and not c.trusted and not c.closed]
        if not strangers:
            return False
        victim = min(strangers, key=lambda c: (c.spoke, c.last_activity))
        self._hostile(victim.peer.host, "tcp-evicted")
        victim.close("evicted")
        self.forget(victim)
        return True

    def register(self, key: Key, connection: _TcpConnection) -> None:
        self._connections[key] = connection

    def forget(self, connection: _TcpConnection) -> None:
        if connection not in self._all:
            return
        self._all.discard(connection)
        for key in connection.keys:
            if self._connections.get(key) is connection:
                del self._connections[key]
        if connection.inbound:
            self._inbound -= 1
            host = connection.peer.host
            left = self._inbound_per_ip.get(host, 1) - 1
            if left:
                self._inbound_per_ip[host] = left
            else:
                self._inbound_per_ip.pop(host, None)


class _UdpProtocol(asyncio.DatagramProtocol):
    """One datagram is one message (RFC 3261 §18.3: no framing over UDP)."""

    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if _is_keepalive_datagram(data):
            return
        self.owner.deliver(data, Peer("udp", _normalise_host(addr[0]), addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a previous sendto: the transaction layer's timers
        # will notice the silence; nothing to do here but say so.
        self.owner.log.debug("transport event=udp-error reason=%r", str(exc))


class _TcpConnection(asyncio.Protocol):
    """One TCP connection: framing, keep-alives, timeouts and a bounded send side.

    Timeouts use one timer armed lazily: it fires at the earliest deadline it knew of
    and re-arms if activity has since moved the deadline, so each received segment costs
    a float store rather than a timer reschedule.
    """

    def __init__(self, owner: SipTransport, *, inbound: bool) -> None:
        self.owner = owner
        self.inbound = inbound
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer = Peer("tcp", "", 0)
        self.keys: list[Key] = []
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        #: When the first byte of the message now arriving came; None between messages.
        self.message_started: float | None = None
        #: How many of the framer's RFC 5626 §3.5.1 pings have had their pong.
        self.pings_answered = 0
        #: Sent a SIP message the layer above parsed (`SipTransport.heard`).
        self.spoke = not inbound
        #: Its source is vouched for (a registered phone, a trunk); connections we open are.
        self.trusted = not inbound
        self.opened = self.last_activity
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        name = self.transport.get_extra_info("peername")
        if not name:  # reset before we got to it: nothing to keep
            self.closed = True
            transport.abort()
            return
        self.peer = Peer("tcp", _normalise_host(name[0]), name[1])
        if not self.owner.admit(self):
            self.closed = True
            transport.abort()
            return
        self.owner.log.debug("transport event=tcp-open from=%s:%d inbound=%s", self.peer.host, self.peer.port, self.inbound)
        self._arm(self._deadline())

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = self.loop.time()
        if self.trusted:
            # Keep-alive CRLFs count as activity (RFC 5626 §4.4.1), but only for a
            # connection vouched for: a stranger's slot is kept by SIP (`heard`) alone.
            self.last_activity = now
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            self.close(f"framing-error status={exc.status} detail={exc.reason!r}")
            return
        pings = self.framer.pings - self.pings_answered
        if pings:
            # RFC 5626 §3.5.1: each double-CRLF ping gets one CRLF pong, at once.
            self.pings_answered = self.framer.pings
            self.write(PONG * pings)
        for message in messages:
            self.owner.deliver(message, self.peer)
            if self.closed:  # the handler may have stopped the transport
                return
        if not _framer_holds_partial(self.framer):
            self.message_started = None
        elif messages or self.message_started is None:
            self.message_started = now  # this segment began the message now buffered
            self._arm(now + self.owner.message_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.forget(self)
        self.owner.log.debug("transport event=tcp-closed peer=%s:%d reason=%r", self.peer.host, self.peer.port, str(exc or ""))

    # sending

    def alias(self, key: Key) -> None:
        """Also reach this connection as `key` (the name it was dialled by)."""
        if key not in self.keys:
            self.keys.append(key)
        self.owner.register(key, self)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            self.owner.log.warning("transport event=send-dropped reason=closed to=%s:%d", self.peer.host, self.peer.port)
            return
        if transport.get_write_buffer_size() + len(data) > self.owner.max_send_buffer:
            self.close("send-buffer-full")
            return
        if self.trusted:
            self.last_activity = self.loop.time()
        transport.write(data)

    def close(self, reason: str) -> None:
        """Drop the connection at once (abort: a stuck peer must not hold it by not reading)."""
        if self.closed:
            return
        self.closed = True
        level = logging.DEBUG if reason in _QUIET_CLOSES else logging.INFO
        self.owner.log.log(level, "transport event=tcp-close peer=%s:%d reason=%s", self.peer.host, self.peer.port, reason)
        if self.transport is not None:
            self.transport.abort()

    # timeouts

    def _arm(self, at: float) -> None:
        if self.timer is not None and self.timer_at <= at:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self.message_started is not None and now >= self.message_started + self.owner.message_timeout:
            self.close("message-timeout")
            return
        if not self.spoke and now >= self.opened + self.owner.hello_timeout:
            self.owner._hostile(self.peer.host, "tcp-no-sip")
            self.close("no-sip-message")
            return
        if now >= self.last_activity + self._idle_limit():
            self.close("idle-timeout" if self.trusted else "stranger-idle-timeout")
            return
        self._arm(self._deadline())

    def _idle_limit(self) -> float:
        if self.trusted:
            return self.owner.idle_timeout
        return min(self.owner.idle_timeout, self.owner.stranger_idle_timeout)

    def _deadline(self) -> float:
        """The earliest time `_on_timer` may have something to close."""
        deadline = self.last_activity + self._idle_limit()
        if not self.spoke:
            deadline = min(deadline, self.opened + self.owner.hello_timeout)
        if self.message_started is not None:
            deadline = min(deadline, self.message_started + self.owner.message_timeout)
        return deadline


#: Closes that happen by the thousand in a flood: logged at DEBUG (summarised via `hostile`).
_QUIET_CLOSES = frozenset({"stopping", "evicted", "no-sip-message", "stranger-idle-timeout"})


def _framer_holds_partial(framer: StreamFramer) -> bool:
    """Whether part of a message is buffered, which runs the slowloris clock."""
    return framer.buffered > 0
