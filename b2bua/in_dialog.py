"""The in-dialog relay: what one leg sends inside its dialog, and what the other gets.

BYE ends both legs (RFC 3261 §15); a re-INVITE or UPDATE (hold, resume, codec change)
is sent on as a new request in the other leg's dialog with our SDP, and its answer comes
back the same way (RFC 3264 §8); INFO digits go to media for *1 (they are not relayed);
the caller's ACK confirms the call and, after a late offer, carries its SDP answer
(RFC 3261 §13.2.1). Every request we build here carries the leg's route set
(RFC 3261 §12.2.1.1; where it is sent: `Signalling._hop`).
"""

from __future__ import annotations

from typing import Any

from b2bua import anchoring
from b2bua.call_state import CallEvent, CallPhase, CallState, Leg, LegEvent, LegState, RelayedRequest
from b2bua.message import Request, Response
from b2bua.peer import Peer
from b2bua.signalling import ALLOW, NOT_ACCEPTABLE, Signalling, incompatible_media

#: RFC 2976 / de-facto INFO DTMF bodies we read (SIP INFO digits from phones without RFC 4733).
DTMF_INFO_TYPES = ("application/dtmf-relay", "application/dtmf")


class InDialogRelay(Signalling):
    """Requests inside a call's dialogs (mixed into `B2BUA`)."""

    def _in_dialog(self, txn: Any, request: Request, peer: Peer, to_tag: str, now: float) -> None:
        found = self.index.dialogs.get((request.call_id, to_tag))
        if found is None:
            if request.method != "ACK":
                self._reply(txn, request, 481, now, "Call/Transaction Does Not Exist")
            return
        call, leg = found
        assert leg.dialog is not None
        reject = leg.dialog.receive_request(request)
        if reject is not None:
            self._reply(txn, request, reject, now)
            return
        method = request.method
        if method == "BYE":
            self._reply(txn, request, 200, now)
            if leg.state is LegState.ANSWERED:
                leg.move(LegEvent.HUNG_UP)
            other = call.other(leg)
            if other is not None:
                self._bye(call, other, now)
            self._end(call, now, cause="bye-from-" + ("caller" if leg is call.a else "callee"))
        elif method in ("INVITE", "UPDATE"):
            self._relay_offer(call, leg, txn, request, now)
        elif method == "INFO":
            self._info(call, leg, txn, request, now)
        elif method == "OPTIONS":
            self._reply(txn, request, 200, now, headers=[("Allow", ALLOW)])
        else:
            self._reply(txn, request, 405, now, headers=[("Allow", ALLOW)])

    def _ack(self, request: Request, now: float) -> None:
        """The caller's ACK for our 2xx: the call is confirmed (RFC 3261 §13.3.1.4)."""
        found = self.index.dialogs.get((request.call_id, request.to_tag or ""))
        if found is None:
            return
        call, leg = found
        if leg is not call.a or call.phase is not CallPhase.ANSWERED:
            return  # a retransmitted ACK, or an ACK on the callee's side: nothing to do
        call.move(CallEvent.ACKED)
        answer = anchoring.parse_sdp(request) if call.a_offer is None else None
        if answer is not None and call.media is not None:
            # Late offer: our 200 made the offer, the caller's answer is in this ACK.
            call.media.set_media(leg.channel, anchoring.endpoint(answer, leg.peer.host))

    def _relay_offer(self, call: CallState, leg: Leg, txn: Any, request: Request, now: float) -> None:
        """re-INVITE/UPDATE (hold, resume, codec change): relayed across with our SDP."""
        other = call.other(leg)
        if other is None or other.dialog is None or other.state is not LegState.ANSWERED:
            self._reply(txn, request, 481, now)
            return
        offer = anchoring.parse_sdp(request)
        if offer is not None and not self.codecs.usable(offer):
            self._reply(txn, request, NOT_ACCEPTABLE, now, headers=[incompatible_media(self.identity)])
            return
        body = b""
        if offer is not None and call.media is not None:
            call.media.set_media(leg.channel, anchoring.endpoint(offer, leg.peer.host))
            body = anchoring.offer_towards(offer, self.config.server.media_ip, call.media.ports[other.channel], other,
                                           self.codecs)
        hop = self._hop(other.peer)
        out = other.dialog.create_request(
            request.method, self.identity.via(hop.transport), contact=self.identity.contact(hop.transport),
            body=body, headers=[("Content-Type", "application/sdp")] if body else [],
        )
        client = self.txn.send_request(out, hop, now)
        self.index.add_relay(client, RelayedRequest(call, txn, request, leg, offer))

    def _relay_response(self, client: Any, response: Response, now: float) -> None:
        relay = self.index.relays[client]
        call, server_txn, original, from_leg = relay.call, relay.server_txn, relay.request, relay.from_leg
        if response.status < 200:
            if response.status != 100:
                self._reply(server_txn, original, response.status, now, response.reason)
            return
        del self.index.relays[client]
        to_leg = call.other(from_leg)
        if call.ended:
            return
        body = b""
        if 200 <= response.status < 300:
            if to_leg is not None and to_leg.dialog is not None:
                to_leg.dialog.target_refresh(response)  # RFC 3261 §12.2.1.2
                if original.method == "INVITE":
                    self._send_ack(to_leg, to_leg.dialog, response)
            answer = anchoring.parse_sdp(response)
            if answer is not None and call.media is not None and to_leg is not None:
                answered = anchoring.endpoint(answer, to_leg.peer.host)
                call.media.set_media(to_leg.channel, answered)
                port = call.media.ports[from_leg.channel]
                if relay.offer is None:  # an offerless re-INVITE: their 2xx is the offer
                    body = anchoring.offer_towards(answer, self.config.server.media_ip, port, from_leg, self.codecs)
                else:
                    reply = anchoring.answer_towards(relay.offer, answer, self.config.server.media_ip, port, from_leg,
                                                     self.codecs, answered.codec)
                    if reply is not None:  # (None cannot be: the offer was checked before relaying)
                        body, pick = reply
                        call.media.set_media(from_leg.channel,
                                             anchoring.offerer_endpoint(relay.offer, from_leg.peer.host, pick))
        self._reply(server_txn, original, response.status, now, response.reason, body=body)

    def _relay_timed_out(self, client: Any, now: float) -> None:
        relay = self.index.relays.pop(client, None)
        if relay is not None:
            self._reply(relay.server_txn, relay.request, 408, now)

    def _info(self, call: CallState, leg: Leg, txn: Any, request: Request, now: float) -> None:
        """SIP INFO digits (application/dtmf-relay): handed to media, which applies *1."""
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype in DTMF_INFO_TYPES:
            digit = parse_dtmf_info(request.body)
            if digit and call.media is not None:
                call.media.dtmf(leg.channel, digit, now)
            self._reply(txn, request, 200, now)
        else:
            self._reply(txn, request, 415 if request.body else 200, now)

    def _stray_response(self, response: Response) -> None:
        """A retransmitted 2xx to an INVITE we already ACKed: ACK again (RFC 3261 §13.2.2.4).

        Its transaction is gone (RFC 6026 §8.4's Accepted state ended); the leg is found
        by its dialog: Call-ID and our tag, which is the response's From tag."""
        try:
            method = response.cseq[1]
        except Exception:  # noqa: BLE001
            return
        if method != "INVITE" or not 200 <= response.status < 300:
            return
        found = self.index.dialogs.get((response.call_id, response.from_tag or ""))
        if found is not None:
            self._resend_ack(found[1], response)


def parse_dtmf_info(body: bytes) -> str | None:
    """`Signal=5` (application/dtmf-relay) or a bare digit (application/dtmf)."""
    text = body.decode("utf-8", "replace").strip()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "signal":
            text = value.strip()
            break
    digit = text[:1].upper()
    return digit if digit and digit in "0123456789*#ABCD" else None
