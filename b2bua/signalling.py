"""What every part of the call logic shares: the objects it was given, and how it
answers, hangs up and logs.

`B2BUA` (b2bua.py) is this base plus two concepts, each in its own module: forking
(forking.py: ring every contact, first answer wins, cancel the others) and the in-dialog
relay (in_dialog.py: ACK, BYE, re-INVITE/UPDATE, INFO between the legs). Routing
(routing.py) and SDP anchoring (anchoring.py) are plain functions they call. The base
never touches a socket or a clock: `now` is passed in, messages go to the transaction
layer.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Callable, Protocol

from rtp.call import Call
from b2bua.call_state import CallIndex, CallState, Leg, LegEvent, LegState
from b2bua.codecs import CodecPolicy
from b2bua.config import Config
from b2bua.dialog import Dialog, copy_record_route, dialog_forming
from b2bua.identity import Identity
from b2bua.message import Request, Response, make_response
from b2bua.peer import Peer
from b2bua.routing import quote
from b2bua.transaction import TransactionError

#: Methods we answer; sent in Allow (RFC 3261 §20.5) so phones know what to try.
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER"
#: RFC 3261 §21.4.26: an offer we cannot take (no codec of ours), or no usable answer.
NOT_ACCEPTABLE = 488

log = logging.getLogger("b2bua")


class MediaSessionLike(Protocol):
    ports: tuple[int, int]

    def set_media(self, channel: int, endpoint: Any) -> None: ...
    def answered(self, now: float) -> None: ...
    def dtmf(self, channel: int, digit: str, now: float) -> None: ...
    def close(self) -> None: ...


class MediaLike(Protocol):
    def open_session(self, call: Call) -> MediaSessionLike: ...


class Signalling:
    """The shared state and plumbing of the call logic (see the module docstring)."""

    config: Config
    txn: Any  # the transaction layer (b2bua.transaction.TransactionLayer)
    registrar: Any
    media: MediaLike
    identity: Identity
    index: CallIndex
    codecs: CodecPolicy
    wall_clock: Callable[[], datetime]

    # -- implemented by B2BUA: how a call ends

    def _fail_call(self, call: CallState, status: int, reason: str | None, now: float, cause: str) -> None:
        raise NotImplementedError

    def _end(self, call: CallState, now: float, cause: str, status: int | None = None) -> None:
        raise NotImplementedError

    # -- answering

    def _reply(
        self,
        txn: Any,
        request: Request,
        status: int,
        now: float,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | tuple = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        response = make_response(request, status, reason, to_tag=to_tag, headers=list(headers))
        if dialog_forming(request, status, to_tag):
            copy_record_route(request, response)
        if status < 300 and request.method in ("INVITE", "UPDATE", "SUBSCRIBE"):
            response.headers.set("Contact", self.identity.contact(request_transport(request)))
        response.headers.set("Server", self.identity.user_agent)
        if body:
            response.body = body
            response.headers.set("Content-Type", content_type or "application/sdp")
        try:
            self.txn.send_response(txn, response, now)
        except TransactionError as exc:  # e.g. the transaction already ended: nothing to answer
            log.debug("sip event=late-response status=%d reason=%r", status, str(exc))

    # -- requests inside a leg's dialog

    @staticmethod
    def _hop(peer: Peer) -> Peer:
        """Where a request inside a leg's dialog is sent: the hop the leg already uses (the
        address its INVITE came from, or the one we sent ours to), with the dialog's route
        set as Route headers (RFC 3261 §12.2.1.1, loose routing).

        RFC 3261 §8.1.2 would send to the first route's URI; that is the same proxy in
        every deployment we serve (the proxy that handed us the INVITE, or the one the
        phone registered through, is the one whose Record-Route comes first), and the
        observed address also reaches a proxy behind NAT, and lets a cluster worker's
        edge link name the real destination (b2bua/cluster/edge_link.py).
        """
        return peer

    def _send_ack(self, leg: Leg, dialog: Dialog, response: Response) -> None:
        """ACK a 2xx to an INVITE on `leg` (RFC 3261 §13.2.2.4), kept for its retransmissions."""
        hop = self._hop(leg.peer)
        ack = dialog.ack(response.cseq[0], self.identity.via(hop.transport))
        leg.acks[response.cseq[0]] = (ack, hop)
        self.txn.send_stateless(ack, hop)

    def _resend_ack(self, leg: Leg, response: Response) -> bool:
        sent = leg.acks.get(response.cseq[0])
        if sent is not None:
            self.txn.send_stateless(*sent)
        return sent is not None

    def _send_bye(self, call: CallState, dialog: Dialog, peer: Peer, now: float) -> None:
        hop = self._hop(peer)
        bye = dialog.create_request("BYE", self.identity.via(hop.transport))
        try:
            self.txn.send_request(bye, hop, now)
        except Exception as exc:  # noqa: BLE001 - an unroutable peer must not stop the hang-up
            self._log(call, "bye-failed", reason=str(exc))

    def _bye(self, call: CallState, leg: Leg, now: float) -> None:
        """Hang up an answered leg (RFC 3261 §15.1.1)."""
        if leg.dialog is None or leg.state is not LegState.ANSWERED:
            return
        leg.move(LegEvent.HUNG_UP)
        self._send_bye(call, leg.dialog, leg.peer, now)

    # -- logs

    def _log(self, call: CallState, event: str, **fields: Any) -> None:
        extra = " ".join(f"{k}={quote(v)}" for k, v in fields.items())
        log.info("call=%s event=%s %s", call.id, event, extra)


def incompatible_media(identity: Identity) -> tuple[str, str]:
    """RFC 3261 §20.43: the Warning a 488 for codecs should carry (305 Incompatible media format)."""
    return ("Warning", f'305 {identity.host_port} "Incompatible media format"')


def request_transport(request: Request) -> str:
    try:
        return request.via[0].transport.lower()
    except Exception:  # noqa: BLE001
        return "udp"
