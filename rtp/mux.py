"""Shared media sockets: many calls' legs on a few RTP ports, told apart by source address.

Why: at 2,000 calls a socket per leg means 200,000 readiness events, recvfrom and sendto
calls a second, and the kernel's per-call cost is what limits a relay, not Python. Here a
few sockets each carry up to `LEGS_PER_SOCKET` legs: one `recvmmsg` reads a batch of
datagrams for many calls, and everything one wakeup produces leaves with one `sendmmsg` per
socket (`rtp.batch_io.BatchMux`).

What it costs: the port no longer names the call, so a datagram is routed by its source.
 - A leg's SDP address, and the address it latched to, route exactly (a dict lookup).
 - An unknown source may still be a party behind NAT during the latch window (the relay's
   rule: the first source from the party's signalling IP). If exactly one leg on the
   socket is waiting to latch from that IP and its SDP names another address (a private
   one), it gets the datagram. A party whose SDP names the source's own IP must send from
   its SDP address (RFC 4961 symmetric RTP). Otherwise the datagram is a counted drop:
   `strangers` (nobody waiting from that IP) or `ambiguous` (several).
 - Two calls whose parties send from one address (SIPp's rtp_stream, an SBC with one media
   port, phones behind one NAT) are kept apart by port: a leg's port stays provisional
   until signalling reads it for an SDP (`SharedSession.ports`). `set_media` moves a leg
   whose party would be ambiguous on its port to one where it is not (opening another
   shared port if need be, up to MAX_SHARED_PORTS; past EPOLL_FROM_PORTS a read asks epoll
   which ports have datagrams). A callee's port goes into our offer before its answer names
   its address: a user's leg is put where no other leg of that user is (its calls likely
   answer from one address), and on a call whose caller needed a port of its own (a test
   tool or SBC sending every call from one address) the callee's leg gets one too, as its
   far side is likely the same kind of peer. Phones behind one NAT (SDP naming an RFC
   1918/6598 address) waiting to be learnt from one IP are kept on different ports too.
   Two legs on one published port that expect one address cannot be told apart (an SSRC
   would not do: a sender may use one for every call): their packets are dropped and
   counted (`ambiguous`) until one call ends, never heard in the wrong call.
Shared sockets are IPv4 only; `[server] media_sockets = "per_call"` gives every leg its own
port pair, on this same path (`SharedPorts(dedicated=True)`: a port holding one leg, which
names it, read with the others on the poll clock). An IPv6 media_ip has per-call ports
only, on this same path: its sources' keys are interned while a route holds them
(rtp.source_keys), so a datagram from anyone else costs no memory and goes to the leg's
relay with its exact address.

RTCP rides on each shared port + 1, routed the same way (by the legs' known hosts, the
RTP port + 1 first), with plain recvfrom/sendto: it is a few packets a second per call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import select
import socket
import weakref
from itertools import repeat
from typing import Protocol

import numpy as np

from rtp.call import Call, MediaEndpoint
from rtp.batch_io import BatchMux, ReceiveArea, SendArea
from rtp.fastpath import LegTable, RouteMap
from rtp.lateness import Lateness
from rtp.ports import SOCKET_BUFFER, PortRange, PortsExhausted, read_datagrams
from rtp.prompts import Prompts
from rtp.relay import CallRelay, Datagram, RecorderFactory
from rtp.source_keys import NOWHERE, IPv4Keys, IPv6Keys


class MediaHost(Protocol):
    """What the shared ports need of the media core that owns them (rtp.engine.MediaEngine)."""

    log: logging.Logger
    prompts: Prompts
    make_recorder: RecorderFactory
    feature_timeout: float
    sessions: list  # the calls up (a PortsExhausted message counts them)

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def now(self) -> float: ...

    @property
    def read_lateness(self) -> Lateness: ...

    def wake(self, session: SharedSession) -> None: ...

    def release(self, session: SharedSession) -> None: ...

LEGS_PER_SOCKET = 1024  # legs sharing one port: ~51,200 packets/s, ~100 ms of them in its receive buffer
MUX_BATCH = 256  # datagrams per sendmmsg
#: Shared ports opened to keep apart calls whose parties send from one address (each needs
#: its own port: a socket pair and ~0.25 MB each, about what per-call ports cost; the RTP
#: port range bounds them first); past this many, such legs share a port (an address two of them expect there is dropped).
MAX_SHARED_PORTS = 4096
#: Past this many shared ports a read asks epoll which have datagrams waiting (one system
#: call) instead of trying each: calls kept apart by port (above) may open many.
EPOLL_FROM_PORTS = 4
#: Datagrams one read of every shared port gathers for one pass of the batch lane: numpy's
#: per-call cost spread over every port's packets (2,000 calls: ~400 per 2 ms read).
READ_BATCH = 1024
SHARED_SOCKET_BUFFER = 8 << 20  # per shared socket (if rmem_max allows): ~100 ms of its packets at skb truesize
MAX_BATCHES_PER_WAKEUP = 16  # full areas per read before yielding to other work
# Shared ports are read on a clock, not on readiness: every POLL_INTERVAL all of them are
# drained. Waking per datagram would hand the batch lane a handful of packets at a time and
# pay numpy's per-call cost for each handful; 2 ms gathers ~400 packets at 2,000 calls,
# and 2 ms more delay is nothing to a phone's jitter buffer (the recorder's window is 200 ms).
POLL_INTERVAL = 0.002  # the default of [server] media_poll_ms; 0: on readiness
#: Ports of one read whose batch-lane routes are looked up with numpy (RouteMap.lookup, a
#: few us a call); past this many (dedicated ports: a datagram or two each) a dict look-up
#: per datagram is cheaper.
LOOKUPS_PER_PORT_UP_TO = 8
#: Datagrams one read takes from a dedicated (per-call) port: a leg sends ~0.1 per 2 ms
#: read; more wait for the next read (epoll names the port while it has any). Why a limit:
#: recvmmsg's message headers are reset for as many as it may fill, per port.
DEDICATED_READ = 16


class SharedPort:
    """One shared RTP/RTCP port pair and the legs routed through it."""

    def __init__(self, pool: SharedPorts, port: int, rtp: socket.socket, rtcp: socket.socket) -> None:
        self.pool = pool
        self.port = port
        self.rtp = rtp
        self.rtcp = rtcp
        self.mux = BatchMux(rtp, MUX_BATCH, pool.area, pool.send_area)
        self.legs = 0
        self.routes: dict[int, tuple[SharedSession, int, tuple[str, int]]] = {}  # source key -> leg
        # signalling IP -> legs that may latch, in arrival order (a dict: a trunk's or an office's
        # IP may have thousands waiting, and a leg leaves in O(1), not by a scan of them all)
        self.waiting: dict[str, dict[tuple[SharedSession, int], None]] = {}
        self.rtcp_routes: dict[tuple[str, int], tuple[SharedSession, int]] = {}
        self.strangers = 0
        self.ambiguous = 0
        self.received = 0
        self.ident = pool.next_ident()
        self.fast_routes = RouteMap()  # source key -> batch-lane leg (rtp.fastpath)
        # source keys two live calls' legs share -> those legs: dropped (see _conflict)
        self.conflicts: dict[int, set[tuple[SharedSession, int]]] = {}
        self.parties: dict[tuple[str, str], int] = {}  # (role, name) -> legs here of that party
        # A dedicated port (SharedPorts.dedicated: `media_sockets = "per_call"`) holds one
        # leg, `owner`: the port names the call, so every source that is not routed is that
        # leg's, for its relay's latching rules to decide (rtp.relay.CallRelay._latch).
        self.owner: tuple[SharedSession, int] | None = None

    # -- routing tables ---------------------------------------------------------------

    def attach(self, session: SharedSession, channel: int, endpoint: MediaEndpoint) -> None:
        """A leg's SDP: route its SDP address, and its signalling IP while it may latch."""
        if endpoint.remote is not None and endpoint.remote[0] not in ("0.0.0.0", "::"):
            key = self.key_of(endpoint.remote)
            owner = self.routes.get(key)
            if key in self.conflicts or (owner is not None and owner[0] is not session and not owner[0].closed):
                self._conflict(key, session, channel, endpoint.remote)
            else:
                self.route(key, session, channel, endpoint.remote)
        self.waiting.setdefault(endpoint.signalling_ip, {})[(session, channel)] = None

    def taken(self, endpoint: MediaEndpoint, now: float) -> bool:
        """Would a leg for `endpoint` be ambiguous here: another live leg expects its SDP
        address, or (behind NAT: SDP names another host) waits to latch from its IP?"""
        remote = endpoint.remote
        if remote is not None and remote[0] not in ("0.0.0.0", "::"):
            key = self.key_of(remote)
            if key in self.conflicts:
                return True
            owner = self.routes.get(key)
            if owner is not None and not owner[0].closed:
                return True
        if remote is not None and remote[0] != endpoint.signalling_ip and _behind_nat(remote[0]):
            ip = endpoint.signalling_ip
            for session, channel in self.waiting.get(ip, ()):
                leg = session.relay.legs[channel]
                if (not session.closed and leg.latched is None and now <= leg.latch_until
                        and (leg.remote is None or leg.remote[0] != ip)):  # found by IP (see _claim)
                    return True
        return False

    def _conflict(self, key: int, session: SharedSession, channel: int, addr: tuple[str, int]) -> None:
        """Two calls' parties send from one address to this one port: the leg's port was
        already in an SDP before its party's address was known (a callee), or no other
        shared port could be opened. Nothing tells their packets apart (an SSRC would not:
        a sender may use one SSRC for every call, SIPp's rtp_stream does), so packets from
        that address are dropped for both (`ambiguous`) until one of the calls ends, rather
        than ever crossing into the wrong call."""
        legs = self.conflicts.setdefault(key, set())
        legs.add((session, channel))
        owner = self.routes.pop(key, None)
        if owner is not None:
            self.pool.keys.release(key)
            legs.add((owner[0], owner[1]))
            owner[0].keys[owner[1]].discard(key)
            table = self.pool.table
            g = owner[0].slot * 2 + owner[1]
            if self.fast_routes.get(key) == g:
                del self.fast_routes[key]
                table.keys[g] = None
                table.active[g] = False
        self.pool.core.log.warning(
            "media event=address_conflict call=%s addr=%s:%d port=%d: two calls' parties send from one "
            "address to one port, which cannot tell them apart: their packets are dropped until one ends",
            session.call.call_id, addr[0], addr[1], self.port,
        )

    def route(self, key: int, session: SharedSession, channel: int, addr: tuple[str, int]) -> None:
        """Datagrams from `addr` (its key `key`, as `key_of` gave it) are this leg's. A route
        holds its key (rtp.source_keys: an IPv6 source's key lives while a route names it)."""
        if key not in self.routes:
            key = self.pool.keys.hold(addr)
            if key == NOWHERE:  # not an address of the pool's family: nothing comes from it
                return
        self.routes[key] = (session, channel, addr)
        session.keys[channel].add(key)

    def detach(self, session: SharedSession, channel: int, endpoint: MediaEndpoint) -> None:
        """Forget a leg's routes (its SDP changed, or the call ended)."""
        routes = self.routes
        for key in session.keys[channel]:
            owner = routes.get(key)
            if owner is not None and owner[0] is session and owner[1] == channel:
                del routes[key]
                self.pool.keys.release(key)
        session.keys[channel].clear()
        if endpoint.remote is not None and self.conflicts:
            key = self.key_of(endpoint.remote)
            sharing = self.conflicts.get(key)
            if sharing is not None:
                sharing.discard((session, channel))
                if len(sharing) <= 1:  # one call left on the address: an exact route again
                    del self.conflicts[key]
                    for other, other_channel in sharing:
                        if not other.closed:
                            self.route(key, other, other_channel, endpoint.remote)
                            other.rerouted()
        legs = self.waiting.get(endpoint.signalling_ip)
        if legs:
            legs.pop((session, channel), None)
            if not legs:
                del self.waiting[endpoint.signalling_ip]
        for addr in [a for a, (s, c) in self.rtcp_routes.items() if s is session and c == channel]:
            del self.rtcp_routes[addr]

    def _claim(self, key: int, now: float, data: bytes = b"") -> tuple[SharedSession, int, tuple[str, int]] | None:
        """Who a datagram from an unknown source belongs to, if anyone (see module doc)."""
        if self.owner is not None:  # a dedicated port: the port names the leg (no strangers here)
            return self.owner[0], self.owner[1], self.pool.keys.address(key)
        if key in self.conflicts:
            self.ambiguous += 1
            return None
        addr = self.pool.keys.address(key)
        legs = self.waiting.get(addr[0])
        if not legs:
            self.strangers += 1
            return None
        live = []
        claimants = []
        for session, channel in legs:
            leg = session.relay.legs[channel]
            if leg.latched is None and now <= leg.latch_until and not session.closed:
                live.append((session, channel))
                # A party whose SDP names this very IP sends from its SDP address (RFC 4961
                # symmetric RTP): another port on its host is not it. Only a party whose SDP
                # names another address (a private one: NAT) may be found by IP.
                if leg.remote is None or leg.remote[0] != addr[0]:
                    claimants.append((session, channel))
        if len(live) != len(legs):
            if live:
                self.waiting[addr[0]] = dict.fromkeys(live)
            else:
                del self.waiting[addr[0]]
        if len(claimants) != 1:
            if claimants:
                self.ambiguous += 1
            else:
                self.strangers += 1
            return None
        session, channel = claimants[0]
        return session, channel, addr

    # -- datagrams ------------------------------------------------------------------------

    def key_of(self, addr: tuple[str, int]) -> int:
        """The key datagrams from `addr` arrive with: IPv4's address and port; an IPv6
        source's interned key while a route holds it, else rtp.source_keys.NOWHERE (which
        no route is under: `route` interns it)."""
        return self.pool.keys.find(addr)

    def on_rtp(self) -> None:
        """This port's socket is readable (`POLL_INTERVAL` 0: on readiness)."""
        self.pool.read([self])

    def _one(self, data: bytes, key: int, now: float) -> None:
        """One datagram the batch lane did not take: the relay's full rules (receive)."""
        route = self.routes.get(key)
        learn = route is None
        if route is None:
            route = self._claim(key, now, data)
            if route is None:
                return
        session, channel, addr = route
        table = self.pool.table
        try:
            out = session.relay.receive(channel, data, addr, now)
        except Exception:  # a relay bug must cost one packet, not every call's reader
            self.pool.core.log.exception("media relay failed on a packet for call %s", session.call.call_id)
            return
        finally:
            table.refresh(session, now)
        if session.relay.busy:
            self.pool.core.wake(session)
        if learn and session.relay.legs[channel].latched == addr and key not in self.conflicts:
            self.route(key, session, channel, addr)  # latched: from now on an exact route
        if out:
            session.queue(out)

    def on_rtcp(self) -> None:
        now = self.pool.core.now()
        for data, addr in read_datagrams(self.rtcp, 64):
            route = self.rtcp_routes.get(addr) or self._rtcp_claim(addr)
            if route is None:
                self.strangers += 1
                continue
            session, channel = route
            for leg, payload, target in session.relay.receive_rtcp(channel, data, addr, now):
                session.send_rtcp(leg, payload, target)
            if session.relay.legs[channel].rtcp_latched == addr:
                self.rtcp_routes[addr] = route

    def _rtcp_claim(self, addr: tuple[str, int]) -> tuple[SharedSession, int] | None:
        """An RTCP source: the leg whose RTP comes from port - 1 of it (or that port), else the only leg on its host."""
        if self.owner is not None:  # a dedicated port: its one leg's relay decides (receive_rtcp)
            return self.owner
        host, port = addr
        for rtp_port in (port - 1, port):  # RTCP from RTP + 1 (RFC 3550 §11), or from the RTP port itself
            rtp_route = self.routes.get(self.key_of((host, rtp_port))) if rtp_port > 0 else None
            if rtp_route is not None:
                return rtp_route[0], rtp_route[1]
        found = {(s, c) for s, c, _ in self.routes.values() if _[0] == host}
        for s, c in self.waiting.get(host, ()):
            found.add((s, c))
        if len(found) == 1:
            return found.pop()
        return None


class SharedPorts:
    """The pool of shared ports: opened on demand, filled up to LEGS_PER_SOCKET each.

    `dedicated` (`[server] media_sockets = "per_call"`): every leg gets a port pair of its
    own (`assign` opens one, `release` closes it when the call ends), with a normal socket
    buffer. Why here and not a reader per socket: the port's datagrams then take the same
    path as shared ports' (read in batches on the poll clock, the common packet forwarded
    and recorded by `LegTable.forward`, the rest by `CallRelay.receive`), so a per-call
    port costs what a shared one does but for the system calls (and the Python around
    them) per socket: ~2.5x per packet (docs/performance.md). The port names
    the call (`SharedPort.owner`): no source is a stranger or ambiguous there, the leg's
    relay alone decides whom it latches to, exactly as per-call ports always did."""

    def __init__(self, core: MediaHost, port_pool: PortRange, poll_interval: float = POLL_INTERVAL,
                 table: LegTable | None = None, *, dedicated: bool = False) -> None:
        # Weak: the core owns its pool, and a cycle between them would be garbage for the
        # collector, which the process runs rarely (b2bua gc policy, tests/test_gc_policy.py).
        self.core: MediaHost = weakref.proxy(core)
        self.port_pool = port_pool
        self.poll_interval = poll_interval
        self.dedicated = dedicated
        self.ports: list[SharedPort] = []
        self._dirty: set[SharedPort] = set()
        self.table = table if table is not None else LegTable()  # the media core's one leg table
        # Source keys (rtp.source_keys): IPv4's are the address and port; an IPv6 media_ip
        # (per-call ports only: rtp.engine refuses shared ones) interns the sources routes name.
        # (The family as rtp.ports.bind_socket picks it for the sockets.)
        self.keys: IPv4Keys | IPv6Keys = IPv6Keys() if ":" in port_pool.media_ip else IPv4Keys()
        if not dedicated and isinstance(self.keys, IPv6Keys):
            raise ValueError(f"shared media ports need an IPv4 media_ip, not {port_pool.media_ip}")
        # every port reads into it (see read)
        self.area = ReceiveArea(READ_BATCH, None if isinstance(self.keys, IPv4Keys) else self.keys)
        self.send_area = SendArea(MUX_BATCH)  # and sends from it (batch_io.SendArea)
        self._rotor = 0
        self._idents = 0
        self._poller: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the next poll is due
        self._last_read = 0.0  # when the ports were last read (the lateness of the next read)
        self._epoll = select.epoll() if hasattr(select, "epoll") else None  # which ports have datagrams
        self._by_fd: dict[int, SharedPort] = {}
        self._closed_counts = {"strangers": 0, "ambiguous": 0, "send_dropped": 0, "received": 0, "sent": 0}  # of ports already closed

    def _poll(self) -> None:
        """Drain every shared RTP port (see POLL_INTERVAL), then come back."""
        self._poller = None
        loop = self.core.loop
        try:
            self.read_waiting()
        except Exception:  # a failure must not stop the ports' clock
            self.core.log.exception("media poll failed on the shared ports")
        if self.ports:
            self._due = loop.time() + self.poll_interval
            self._poller = loop.call_at(self._due, self._poll)

    def read_waiting(self, batches: int = MAX_BATCHES_PER_WAKEUP) -> None:
        """Read the ports with datagrams waiting (all of them, or those epoll names), at most
        `batches` full receive areas. Its lateness (MediaHost.read_lateness) is how much
        longer than `poll_interval` the ports went unread, whether this read is the poll's
        or one between a tick's flushes."""
        now = self.core.now()
        if self._last_read:
            self.core.read_lateness.add(now - self._last_read - self.poll_interval)
        self._last_read = now
        ports = self.ports
        if self._epoll is not None and (self.dedicated or len(ports) > EPOLL_FROM_PORTS):
            by_fd = self._by_fd
            # At most 1,023 ready ports a read (poll's default), deliberately: past that
            # many (thousands of per-call ports behind) the rest wait one poll and give two
            # datagrams a system call; reading them all at once measured slower
            # (bench/media_edge.py, 2,000 per-call calls read once per 20 ms: 20 us/packet
            # against 13).
            ports = [by_fd[fd] for fd, _ in self._epoll.poll(0) if fd in by_fd]
        if ports:
            self.read(ports, batches)

    def read(self, ports: list[SharedPort], batches: int = MAX_BATCHES_PER_WAKEUP) -> None:
        """Read every port's waiting datagrams into the one receive area, one after another,
        and hand them to the batch lane together; then send what that produced.

        A read starts at a different port each time, and a full area's next one with the
        ports not read yet, then those that had more than they gave: a port with more
        waiting than the area holds cannot keep the others from being read, and a port
        found empty is not asked again (per-call ports: thousands a read)."""
        area = self.area
        rows = area.rows
        table = self.table
        now = self.core.now()
        limit = DEDICATED_READ if self.dedicated else 0
        first = self._rotor % len(ports) if ports else 0
        self._rotor += 1
        pending = ports[first:] + ports[:first]
        for _ in range(batches):
            if not pending:
                break
            total = 0
            segments: list[tuple[SharedPort, int, int]] = []
            more: list[SharedPort] = []  # gave all they were asked for: may have more
            tried = len(pending)
            for k, port in enumerate(pending):
                room = area.batch - total
                asked = limit if 0 < limit < room else room
                n = area.recv(port.mux.fd, total, limit)
                if n:
                    port.received += n
                    segments.append((port, total, total + n))
                    total += n
                if n == asked:
                    more.append(port)
                if total >= area.batch:
                    tried = k + 1
                    break
            pending = pending[tried:] + more
            if not total:
                break
            lens, keys = area.batch_of(total)
            if len(segments) == 1:
                legs = segments[0][0].fast_routes.lookup(keys)
            elif len(segments) <= LOOKUPS_PER_PORT_UP_TO:
                legs = np.concatenate([port.fast_routes.lookup(keys[a:b]) for port, a, b in segments])
            else:  # many ports (dedicated ones: a packet or two each): a dict look-up a datagram
                key_list = keys.tolist()
                found: list[int] = []
                for port, a, b in segments:
                    found.extend(map(port.fast_routes.get, key_list[a:b], repeat(-1, b - a)))
                legs = np.array(found, dtype=np.int64)
            slow: range | list[int]
            if legs.max() >= 0:
                try:
                    slow = table.forward(rows[:total], lens, legs, now)
                except Exception:  # a lane bug must cost a batch, not the reader
                    self.core.log.exception("media batch lane failed; the batch goes packet by packet")
                    slow = range(total)
            else:
                slow = range(total)
            if slow:
                sizes = lens.tolist()
                at = 0
                for i in slow:  # ascending: walk the segments alongside
                    while i >= segments[at][2]:
                        at += 1
                    segments[at][0]._one(area.datagram(i, sizes[i]), int(keys[i]), now)
            # What receive() queued goes now: the lane sends at once, so a leg's packets in
            # the next area must not overtake these.
            self.flush()
            if total < area.batch:
                break

    def next_ident(self) -> int:
        self._idents += 1
        return self._idents

    def assign(self, endpoint: MediaEndpoint | None = None, now: float = 0.0, party: tuple[str, str] = ("", ""),
               apart: bool = False) -> SharedPort:
        """A port with room for one more leg, on which `endpoint`'s party (when known) can
        be told apart from every other live leg's, and (`apart`) where no other leg is
        `party`'s (its address unknown yet, likely the one its other calls send from);
        opens one when none fits. Past MAX_SHARED_PORTS the least-filled port is shared
        anyway (rtp.mux module doc). Dedicated: always a new port pair (PortsExhausted when
        the range is full)."""
        if self.dedicated:
            port = self._open()
            port.legs = 1
            return port
        for port in self.ports:
            if (port.legs < LEGS_PER_SOCKET and (endpoint is None or not port.taken(endpoint, now))
                    and not (apart and port.parties.get(party))):
                break
        else:
            if (endpoint is not None or apart) and len(self.ports) >= MAX_SHARED_PORTS:
                port = min(self.ports, key=lambda p: p.legs)
            else:
                port = self._open()
        port.legs += 1
        port.parties[party] = port.parties.get(party, 0) + 1
        return port

    def release(self, port: SharedPort, party: tuple[str, str] = ("", "")) -> None:
        port.legs -= 1
        left = port.parties.get(party, 0) - 1
        if left > 0:
            port.parties[party] = left
        else:
            port.parties.pop(party, None)
        if port.legs <= 0 and (self.dedicated or len(self.ports) > 1):
            self.ports.remove(port)
            self._close(port)

    def _open(self) -> SharedPort:
        core = self.core
        base, rtp, rtcp = self.port_pool.bind_pair(buffer=SOCKET_BUFFER if self.dedicated else SHARED_SOCKET_BUFFER,
                                                   calls=len(core.sessions))
        port = SharedPort(self, base, rtp, rtcp)
        self.table.ports[port.ident] = port
        core.loop.add_reader(rtcp.fileno(), port.on_rtcp)
        if self._epoll is not None:
            self._epoll.register(rtp.fileno(), select.EPOLLIN)
            self._by_fd[rtp.fileno()] = port
        if not self.poll_interval:
            core.loop.add_reader(rtp.fileno(), port.on_rtp)
        elif self._poller is None:
            self._due = core.loop.time() + self.poll_interval
            self._poller = core.loop.call_at(self._due, self._poll)
        self.ports.append(port)
        if not self.dedicated:  # a call's own ports are not an event worth a line
            core.log.info("media event=shared_port port=%d shared_ports=%d", base, len(self.ports))
        return port

    def _close(self, port: SharedPort) -> None:
        self.table.ports.pop(port.ident, None)
        port.owner = None  # the session and its dedicated port referred to each other
        counts = self._closed_counts
        counts["strangers"] += port.strangers
        counts["ambiguous"] += port.ambiguous
        counts["send_dropped"] += port.mux.send_dropped
        counts["received"] += port.received
        counts["sent"] += port.mux.sent
        if not self.dedicated:
            self.core.log.info("media event=shared_port_closed port=%d received=%d sent=%d", port.port, port.received,
                               port.mux.sent)
        loop = self.core.loop
        if self._epoll is not None and self._by_fd.pop(port.rtp.fileno(), None) is not None:
            try:
                self._epoll.unregister(port.rtp.fileno())
            except (OSError, ValueError):
                pass
        for sock in (port.rtp, port.rtcp):
            try:
                loop.remove_reader(sock.fileno())
            except (ValueError, RuntimeError):
                pass
            sock.close()
        self.port_pool.release(port.port)

    def mark(self, port: SharedPort) -> None:
        self._dirty.add(port)

    def flush(self) -> None:
        """Send what every socket has queued: one sendmmsg per socket per batch."""
        dirty, self._dirty = self._dirty, set()
        for port in dirty:
            try:
                port.mux.flush()
            except OSError:
                port.mux.send_dropped += len(port.mux.payloads)
                port.mux.payloads, port.mux.addrs = [], []

    def close_all(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
            self._by_fd.clear()
        stats = self.stats
        self.core.log.info("media event=%s %s", "media_ports_closed" if self.dedicated else "shared_ports_closed",
                           " ".join(f"{k}={v}" for k, v in stats.items()))
        for port in self.ports:
            self._close(port)
        self.ports = []

    @property
    def stats(self) -> dict[str, int]:
        counts = self._closed_counts
        return {
            "shared_ports": 0 if self.dedicated else len(self.ports),
            "strangers": counts["strangers"] + sum(p.strangers for p in self.ports),
            "ambiguous": counts["ambiguous"] + sum(p.ambiguous for p in self.ports),
            "send_dropped": counts["send_dropped"] + sum(p.mux.send_dropped for p in self.ports),
            "received": counts["received"] + sum(p.received for p in self.ports),
            "sent": counts["sent"] + sum(p.mux.sent for p in self.ports),
        }


class SharedSession:
    """One call's media on the pool's ports (shared, or dedicated: a pair per leg): the same
    interface as `rtp.engine.MediaSession` (left for systems without recvmmsg)."""

    def __init__(self, core: MediaHost, pool: SharedPorts, call: Call) -> None:
        self.core = core
        self.call = call
        self.pool = pool
        self.relay = CallRelay(call, core.prompts, core.make_recorder, feature_timeout=core.feature_timeout,
                               table=pool.table)
        self.closed = False
        self.send_errors = 0
        self._ports: list[SharedPort] = []
        self._party = [(p.role, p.name) for p in call.parties]
        try:
            for channel in (0, 1):
                self._ports.append(pool.assign(party=self._party[channel]))
        except BaseException:
            for channel, port in enumerate(self._ports):
                pool.release(port, self._party[channel])
            pool.table.remove(self.relay.slot)
            raise
        # A leg's port is provisional until signalling reads it for an SDP (`ports`): until
        # then set_media may move the leg to a port on which its party's address is free.
        # A dedicated port is the leg's alone: fixed from the start, and it names the leg.
        self._published = [pool.dedicated, pool.dedicated]
        if pool.dedicated:
            for channel, port in enumerate(self._ports):
                port.owner = (self, channel)
        self._apart = False  # a leg needed a port of its own: the other leg's unknown party may too
        self._endpoints: list[MediaEndpoint | None] = [None, None]
        self.keys: tuple[set[int], set[int]] = (set(), set())  # route keys each leg owns
        self.slot = self.relay.slot  # legs 2*slot and 2*slot + 1 of the leg table
        pool.table.attach(self)
        now = self.core.now()
        for channel, party in enumerate(call.parties):
            if party.media is not None:
                self.set_media(channel, party.media, now)

    def rerouted(self) -> None:
        """Routes changed under this call (an address conflict ended): the lane may take it again."""
        self.pool.table.refresh(self, self.core.now())

    def port_of(self, channel: int) -> SharedPort:
        return self._ports[channel]

    @property
    def ports(self) -> tuple[int, int]:
        """Our port facing each party; once read (for an SDP) a leg's port is fixed. A leg
        whose party's address is not known yet (a callee: our offer goes first) and is a
        user (named, or unnamed on a call whose caller needed a port of its own) is first
        moved off a port where another leg of that user is: its calls likely answer from one
        address (a phone, SIPp's UAS). Not trunks: a carrier's many calls come from many
        addresses, and a port each would cost a read each."""
        for channel in (0, 1):
            if not self._published[channel]:
                party = self._party[channel]
                if self._endpoints[channel] is None and party[0] == "user" and (party[1] or self._apart):
                    self._spread(channel)
                self._published[channel] = True
        return self._ports[0].port, self._ports[1].port

    def _spread(self, channel: int) -> None:
        party = self._party[channel]
        current = self._ports[channel]
        if current.parties.get(party, 0) <= 1:
            return
        try:
            better = self.pool.assign(party=party, apart=True)
        except (OSError, PortsExhausted):  # no port for another shared socket: stay
            return
        if better is current:
            self.pool.release(current, party)  # nowhere better: keep it (counted once)
            return
        self._ports[channel] = better
        self.pool.release(current, party)

    def _place(self, channel: int, endpoint: MediaEndpoint, now: float) -> None:
        """Before its port is published, move a leg off a port where its party's address
        would be ambiguous (another live leg there expects the same source): two calls
        whose parties send from one address (SIPp, an SBC, one NAT) get different ports."""
        current = self._ports[channel]
        if self._published[channel] or not current.taken(endpoint, now):
            return
        party = self._party[channel]
        try:
            better = self.pool.assign(endpoint, now, party)
        except (OSError, PortsExhausted):  # no port for another shared socket: stay
            return
        if better is current:
            self.pool.release(current, party)
            return
        self._ports[channel] = better
        self.pool.release(current, party)
        self._apart = True

    def set_media(self, channel: int, endpoint: MediaEndpoint, now: float | None = None) -> None:
        now = self.core.now() if now is None else now
        table = self.pool.table
        old = self._endpoints[channel]
        if old is not None:
            self._ports[channel].detach(self, channel, old)
        self._place(channel, endpoint, now)
        self.relay.set_media(channel, endpoint, now)
        self._ports[channel].attach(self, channel, endpoint)
        self._endpoints[channel] = endpoint
        leg = self.relay.legs[channel]
        if leg.latched is not None and leg.latched != endpoint.remote:  # unchanged SDP keeps its NAT latch
            port = self._ports[channel]
            port.route(port.key_of(leg.latched), self, channel, leg.latched)
        table.refresh(self, now)

    def answered(self, now: float | None = None) -> None:
        now = self.core.now() if now is None else now
        table = self.pool.table
        self.relay.answered(now)
        table.refresh(self, now)
        self.core.wake(self)

    def dtmf(self, channel: int, digit: str, now: float | None = None) -> None:
        now = self.core.now() if now is None else now
        table = self.pool.table
        out = self.relay.dtmf(channel, digit, now)
        table.refresh(self, now)
        self.core.wake(self)
        self.queue(out)
        self.pool.flush()

    def queue(self, out: list[Datagram]) -> None:
        ports = self._ports
        for leg, payload, target in out:
            port = ports[leg]
            port.mux.queue(payload, target)
            self.pool._dirty.add(port)

    def send_rtcp(self, leg: int, payload: bytes, target: tuple[str, int]) -> None:
        try:
            self._ports[leg].rtcp.sendto(payload, target)
        except OSError:
            self.send_errors += 1

    def _tick(self, now: float) -> None:
        table = self.pool.table
        relay = self.relay
        if not relay.busy:
            # Nothing playing or pending (CallRelay.busy): the tick only flushes the
            # recorder, which changes nothing the lane decides on.
            out = relay.tick(now)
        else:
            try:
                out = relay.tick(now)
            finally:
                table.refresh(self, now)
        if out:
            self.queue(out)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for channel, port in enumerate(self._ports):
            endpoint = self._endpoints[channel]
            if endpoint is not None:
                port.detach(self, channel, endpoint)
        try:
            self.relay.close(self.core.now())
        finally:
            self.pool.table.remove(self.slot)
            for channel, port in enumerate(self._ports):
                self.pool.release(port, self._party[channel])
            self.core.release(self)


_NAT_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))


def _behind_nat(ip: str) -> bool:
    """An SDP address a NAT hides (RFC 1918, RFC 6598 shared space): such a party is found
    by its signalling IP, so two of them waiting on one port could not be told apart."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in _NAT_NETWORKS)


def ipv4(ip: str) -> bool:
    try:
        socket.inet_aton(ip)
    except OSError:
        return False
    return ip.count(".") == 3


