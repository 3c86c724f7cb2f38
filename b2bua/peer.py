"""Where a SIP message came from or goes to, independent of sockets.

The transaction layer and the B2BUA core are sans-IO: they name the far end with this
value and the transport adapter (`b2bua/transport.py`) turns it into a socket write. It is
frozen so it can key dicts (connection reuse, per-peer state) and be compared in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The transports we speak. RFC 3261 §18 requires UDP and TCP of every element; the name
#: is lower case as in the Via transport parameter's registry (and what the adapter uses).
UDP = "udp"
TCP = "tcp"

#: Transports that deliver reliably, so the transaction layer neither retransmits over
#: them nor waits for stray retransmissions (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class Peer:
    """One far end: `transport` ("udp" or "tcp"), `host` (an IP literal, no brackets) and `port`.

    For a received request this is the packet's source (over TCP, the connection the
    transport will reuse for the answer, RFC 3261 §18.2.2).
    """

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """True over TCP (and other stream transports): no retransmissions, zero wait timers."""
        return self.transport.lower() in RELIABLE_TRANSPORTS
