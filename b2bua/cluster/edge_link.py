"""Between a worker and its edge: who a request really came from, and how ours go out.

Behind Kamailio a worker sees every request arrive from the edge's own socket, so the
rules that judge a request by its source (403 to strangers, trunks recognised by address,
lockouts per address) need the address the edge received it from. The edge writes it in
`X-B2BUA-Source: <transport> <ip> <port>` on every request it passes to a worker, after
deleting any copy the sender put there (edge_config's request_route).

The trust rule: a worker believes that header only on a UDP datagram whose source is
exactly the edge's address and port (`[cluster] edge_address`, the socket Kamailio sends
from). From any other source the header is ignored and the packet's own source is used,
so a stranger who writes the header and sends straight to a worker gains nothing: the
toll-fraud rules see the stranger's real address, exactly as they do without an edge.

The edge also stamps every request it passes to a worker with the wall-clock time it
sent that copy (`X-B2BUA-Sent: <seconds.microseconds>`, one stamp per branch, so a retry
at the next worker carries its own). A worker that reads a new INVITE after the edge has
given up on it (edge_config.WORKER_ANSWER_MS: the edge has already tried the next worker)
must not ring anyone for it: `age()` says how old it is. Wall clock, not monotonic: the
stamp crosses processes (and hosts, which must then run NTP: a clock skew of a second
makes a worker refuse every call, which the edge then gives to another worker).

The other way: requests a worker sends to a phone or trunk go to the edge, which holds
the phone's NAT binding or TCP connection; `X-B2BUA-Dst: <sip URI>` tells it where,
and the edge takes that header only from a worker in its dispatcher list. Responses are
not rewritten: they follow the request's Via, which for a request from the edge is the
edge itself (RFC 3261 §18.2.2).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from typing import Any

from b2bua.message import Request
from b2bua.peer import UDP, Peer

SOURCE_HEADER = "X-B2BUA-Source"
DEST_HEADER = "X-B2BUA-Dst"
SENT_HEADER = "X-B2BUA-Sent"
_TRANSPORTS = frozenset({"udp", "tcp", "tls", "ws", "wss", "sctp"})


class EdgeLink:
    """The trust rule and the outbound rewrite for one worker and its one edge."""

    def __init__(self, edge_host: str, edge_port: int) -> None:
        self.edge = Peer(UDP, _canonical_ip(edge_host), edge_port)

    def is_edge(self, peer: Peer) -> bool:
        """True only for the edge's exact UDP socket: over TCP Kamailio would use an
        ephemeral port that anyone on the host could also bind."""
        if peer.transport != UDP or peer.port != self.edge.port:
            return False
        try:
            return _canonical_ip(peer.host) == self.edge.host
        except ValueError:  # a name not yet resolved is not the edge's socket
            return False

    def real_source(self, request: Request, peer: Peer) -> Peer:
        """Where `request`, received from `peer`, really came from."""
        if not self.is_edge(peer):
            return peer  # a header from anyone but the edge is the sender's word: ignored
        values = request.headers.get_all(SOURCE_HEADER)
        if not values:
            return peer  # the edge's own request (its OPTIONS probe)
        # The edge deletes the sender's copies and appends its own: the last is the edge's.
        parsed = parse_source(values[-1])
        return parsed if parsed is not None else peer

    def age(self, request: Request, peer: Peer, wall_now: float) -> float | None:
        """Seconds since the edge sent this copy of `request` (its X-B2BUA-Sent stamp);
        None when it has none, or it did not come from the edge (anyone else's stamp is
        ignored, as their source header is)."""
        if not self.is_edge(peer):
            return None
        values = request.headers.get_all(SENT_HEADER)
        if not values:
            return None
        try:
            sent = float(values[-1].strip())
        except ValueError:
            return None
        return wall_now - sent if math.isfinite(sent) else None

    def translate(self, event: Any) -> Any:
        """A transaction event with its `peer` replaced by the real source, if it has one.

        The transaction layer keeps the socket peer (its responses go back to the edge);
        only the B2BUA core, which applies the policy, sees the phone's or trunk's address.
        """
        request = getattr(event, "request", None)
        peer = getattr(event, "peer", None)
        if not isinstance(request, Request) or not isinstance(peer, Peer):
            return event
        real = self.real_source(request, peer)
        return event if real == peer else dataclasses.replace(event, peer=real)

    def outbound(self, data: bytes, peer: Peer) -> tuple[bytes, Peer]:
        """Where to send `data` meant for `peer`: requests to anyone but the edge go to the
        edge with the real destination in `X-B2BUA-Dst`; responses and anything already for
        the edge go as they are."""
        if self.is_edge(peer) or data.startswith(b"SIP/"):
            return data, peer
        end = data.find(b"\r\n")
        if end < 0:
            return data, peer
        line = f"{DEST_HEADER}: {destination_uri(peer)}\r\n".encode("ascii")
        return data[: end + 2] + line + data[end + 2 :], self.edge


def parse_source(value: str) -> Peer | None:
    """`udp 203.0.113.5 5060` -> Peer; None for anything else (never trusted half-parsed)."""
    parts = value.split()
    if len(parts) != 3:
        return None
    transport, host, port_text = parts
    transport = transport.lower()
    if transport not in _TRANSPORTS or not port_text.isdigit():
        return None
    port = int(port_text)
    if not 0 < port < 65536:
        return None
    try:
        host = _canonical_ip(host.strip("[]"))
    except ValueError:
        return None
    return Peer(transport, host, port)


def destination_uri(peer: Peer) -> str:
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"sip:{host}:{peer.port};transport={peer.transport}"


def _canonical_ip(host: str) -> str:
    return str(ipaddress.ip_address(host))
