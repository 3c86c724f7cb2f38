"""Everything the transaction layer (`b2bua/transaction.py`) tells its user, in one file.

Read this module to know the layer's whole vocabulary (as h11's `_events.py`): each event
is a frozen dataclass with only the fields the transaction user (TU) needs to act on it.
`txn_id` is an opaque string; the TU passes it back to `send_response`/`cancel`, and uses
it to find which of its requests a response or time-out belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua.message import Request, Response
from b2bua.peer import Peer


@dataclass(frozen=True)
class RequestReceived:
    """A new request created a server transaction; answer it with `send_response(txn_id, ...)`.

    Retransmissions never produce a second one (RFC 3261 §17.2.3 matching). For INVITE a
    100 Trying has already been sent (RFC 3261 §17.2.1). `request`'s top Via already carries
    the received/rport parameters (RFC 3261 §18.2.1, RFC 3581 §4), so `make_response` copies
    them. ACK and CANCEL never arrive as this event (see AckReceived, CancelReceived).
    """

    txn_id: str
    request: Request
    peer: Peer


@dataclass(frozen=True)
class AckReceived:
    """An ACK for a 2xx (it matches no server transaction, RFC 3261 §17.2.3, §13.3.1.4).

    It belongs to the dialog, not to a transaction: the TU matches it by Call-ID and tags.
    If it acknowledges a 2xx the layer was retransmitting, the retransmissions have stopped.
    """

    request: Request
    peer: Peer


@dataclass(frozen=True)
class ResponseReceived:
    """A response for the client transaction `txn_id` (RFC 3261 §17.1.3 matching).

    Retransmitted provisional and non-2xx final responses are absorbed by the layer; a
    retransmitted 2xx to an INVITE is passed up again (RFC 6026 §8.4) so the TU re-sends
    its ACK. `txn_id` is None for a response matching no transaction (a 2xx retransmitted
    after Timer M, or a stray); the TU may re-ACK a 2xx or ignore it.
    """

    txn_id: str | None
    response: Response


@dataclass(frozen=True)
class CancelReceived:
    """A CANCEL matched the INVITE server transaction `txn_id` while it was in Proceeding.

    The layer already answered the CANCEL with 200 (RFC 3261 §9.2); the TU should now
    answer the INVITE with 487 Request Terminated. `request` is the CANCEL.
    """

    txn_id: str
    request: Request


@dataclass(frozen=True)
class TransactionTimedOut:
    """Timer B, F or H fired (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1), or a CANCELled INVITE
    got no final response within 64*T1 (RFC 3261 §9.1).

    For a client transaction the TU treats it as a 408 Request Timeout (RFC 3261 §8.1.3.1);
    for an INVITE server transaction (Timer H) the ACK for our non-2xx never came.
    `request` is the request that created the transaction.
    """

    txn_id: str
    request: Request


@dataclass(frozen=True)
class AckTimedOut:
    """A 2xx we sent to an INVITE was retransmitted for 64*T1 without an ACK.

    RFC 3261 §13.3.1.4: the dialog is confirmed but the session SHOULD be ended with a BYE.
    `request` is the INVITE that `txn_id` (its server transaction) answered.
    """

    txn_id: str
    request: Request


Event = RequestReceived | AckReceived | ResponseReceived | CancelReceived | TransactionTimedOut | AckTimedOut
