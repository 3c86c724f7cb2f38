"""Forking: ring every contact at once, the first answer wins, the others are cancelled.

A UA doing what RFC 3261 §16.7 describes for a forking proxy: each branch is a new B
leg (our Call-ID, tags, CSeq and SDP, §8.1.1); provisional responses reach the caller
as 180/183 (early media through us, RFC 3960); the first 2xx is bridged to the caller
and every other branch gets CANCEL (§9.1); a 2xx that crosses our CANCEL is ACKed and
hung up (§9.1, §15); when every branch failed, the caller gets the most telling
failure (§16.7 step 6).
"""

from __future__ import annotations

import secrets
from typing import Any

from b2bua import anchoring
from b2bua.call_state import CallEvent, CallPhase, CallState, Leg, LegEvent, LegState
from b2bua.dialog import Dialog
from b2bua.message import Headers, Request, Response
from b2bua.routing import Target, decide_recording
from b2bua.signalling import ALLOW, NOT_ACCEPTABLE, Signalling

#: RFC 3261 §8.1.1.6: Max-Forwards on requests we originate.
MAX_FORWARDS = 70
#: How long a branch INVITE cancelled when its call ended is remembered, so that a 2xx
#: crossing our CANCEL still gets ACK and BYE (RFC 3261 §9.1): past the transaction's own
#: give-up time (64*T1 = 32 s, after which it reports a timeout and is forgotten then).
LATE_ANSWER_WINDOW = 64.0
#: Ranking of branch failures when every branch of a fork failed: a 6xx ends the
#: search (RFC 3261 §16.7 step 6), a busy callee is more telling than no answer.
FAILURE_PREFERENCE = (600, 603, 604, 606, 486, 480, 408)


class Forking(Signalling):
    """Branches out, branch responses in (mixed into `B2BUA`)."""

    def _fork(self, call: CallState, target: Target, now: float) -> None:
        """Send one B-leg INVITE: new Call-ID, tags and CSeq; our SDP (RFC 3261 §8.1.1)."""
        a_req = call.a.request
        assert a_req is not None
        dest = target.peer
        leg = Leg(peer=dest, channel=1 - call.a.channel, user=target.user, local_tag=new_tag(),
                  sdp_session=secrets.randbelow(2**31))
        from_na = a_req.from_
        caller_user = from_na.uri.user or "anonymous"
        if call.caller is not None:
            caller_user = call.caller.extension or call.caller.name if call.direction == "internal" else call.caller.name
        display = f'"{from_na.display}" ' if from_na.display else ""
        headers = Headers()
        headers.add("Via", self.identity.via(dest.transport))
        headers.add("Max-Forwards", str(MAX_FORWARDS))
        headers.add("From", f"{display}<sip:{caller_user}@{self.identity.host_port}>;tag={leg.local_tag}")
        headers.add("To", target.to_header)
        headers.add("Call-ID", f"{call.id}-{len(call.branches)}@{self.identity.host}")
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self.identity.contact(dest.transport))
        headers.add("Allow", ALLOW)
        headers.add("User-Agent", self.identity.user_agent)
        body = b""
        if call.media is not None:
            port = call.media.ports[leg.channel]
            if call.a_offer is not None:
                body = anchoring.offer_towards(call.a_offer, self.config.server.media_ip, port, leg, self.codecs)
            else:  # late offer: we offer on B
                body = anchoring.own_offer(self.config.server.media_ip, port, leg, self.codecs)
            headers.add("Content-Type", "application/sdp")
        request = Request("INVITE", target.uri, headers, body)
        leg.request = request
        call.branches.append(leg)
        try:
            leg.txn = self.txn.send_request(request, dest, now)
        except Exception as exc:  # noqa: BLE001 - an unroutable contact must not take the call down
            self._log(call, "branch-failed", target=target.uri, reason=str(exc))
            leg.move(LegEvent.REJECTED)
            return
        self.index.add_invite(call, leg)
        self._log(call, "ringing-out", target=target.uri, via=f"{dest.transport}:{dest.host}:{dest.port}", user=leg.who)

    def _cancel_branches(self, call: CallState, now: float, keep: Leg | None = None) -> None:
        """CANCEL every branch still ringing but `keep` (RFC 3261 §9.1)."""
        for leg in call.branches:
            if leg is not keep and leg.state in (LegState.CALLING, LegState.EARLY):
                leg.move(LegEvent.CANCELLED)
                self.txn.cancel(leg.txn, now)

    # -- responses to our branch INVITEs

    def _branch_response(self, call: CallState, leg: Leg, response: Response, now: float) -> None:
        status = response.status
        if status < 200:
            if status == 100 or leg.state not in (LegState.CALLING, LegState.EARLY):
                return  # a cancelled or answered branch's late 18x changes nothing
            leg.move(LegEvent.PROVISIONAL)
            if not call.unanswered:
                return
            answer = anchoring.parse_sdp(response)
            body = b""
            if answer is not None and call.media is not None and call.a_offer is not None:
                # Early media (RFC 3960): the caller hears the callee side's tones through us,
                # each side in its own codec. (After a late offer the caller has nothing to
                # answer yet: it gets a plain 180.)
                early = anchoring.endpoint(answer, leg.peer.host)
                answered = anchoring.answer_towards(call.a_offer, answer, self.config.server.media_ip,
                                                    call.media.ports[call.a.channel], call.a, self.codecs, early.codec)
                if answered is not None:
                    body, pick = answered
                    call.media.set_media(leg.channel, early)
                    call.media.set_media(call.a.channel, anchoring.offerer_endpoint(call.a_offer, call.a.peer.host, pick))
            if call.phase is CallPhase.RINGING or body:
                self._log(call, "ringing", status=status, by=leg.who)
            call.move(CallEvent.PROVISIONAL)
            self._reply(call.a.txn, call.a.request, 183 if body else 180, now, to_tag=call.a.local_tag, body=body)
            return
        if 200 <= status < 300:
            self._branch_answered(call, leg, response, now)
            return
        self._branch_failed(call, leg, status, response.reason, now)

    def _branch_failed(self, call: CallState, leg: Leg, status: int, reason: str | None, now: float) -> None:
        if leg.state in (LegState.CALLING, LegState.EARLY, LegState.CANCELLED):
            leg.move(LegEvent.REJECTED)
        leg.final_status = status
        self._log(call, "branch-failed", status=status, by=leg.who)
        if call.unanswered and all(b.over for b in call.branches):
            best = best_failure([b.final_status for b in call.branches if b.final_status])
            self._fail_call(call, best, reason if best == status else None, now, cause=str(best))

    def _branch_answered(self, call: CallState, leg: Leg, response: Response, now: float) -> None:
        if leg.final_status is not None and 200 <= leg.final_status < 300:
            # A retransmission of a 2xx we already took (our ACK was lost or late): the same
            # ACK again (RFC 3261 §13.2.2.4). It is not a second answer: the call stays up.
            self._resend_ack(leg, response)
            return
        dialog = Dialog.from_uac(leg.request, response)
        self._send_ack(leg, dialog, response)
        leg.final_status = response.status
        if not call.unanswered:
            # Lost the race (another branch answered first, or the caller gave up, and the 2xx
            # crossed our CANCEL): ACK it, then hang it up (RFC 3261 §9.1, §15).
            if leg.state is LegState.CANCELLED:
                leg.move(LegEvent.ANSWERED)  # -> LATE
            self._log(call, "late-answer", by=leg.who, action="bye")
            self._send_bye(call, dialog, leg.peer, now)
            return
        leg.move(LegEvent.ANSWERED)
        leg.dialog = dialog
        answer = anchoring.parse_sdp(response)
        answered_endpoint = anchoring.endpoint(answer, leg.peer.host) if answer is not None else None
        a_port = call.media.ports[call.a.channel] if call.media is not None else 0
        to_caller = None
        if answer is not None and call.a_offer is not None:
            to_caller = anchoring.answer_towards(call.a_offer, answer, self.config.server.media_ip, a_port, call.a,
                                                 self.codecs, answered_endpoint.codec)
        if answer is None or call.media is None or (call.a_offer is not None and to_caller is None):
            self._send_bye(call, dialog, leg.peer, now)
            leg.move(LegEvent.HUNG_UP)
            self._fail_call(call, NOT_ACCEPTABLE, "Not Acceptable Here", now, cause="no-sdp-answer")
            return
        call.winner = leg
        call.ring_deadline = None
        self.index.add_dialog(call, leg)
        self._cancel_branches(call, now, keep=leg)
        call.media.set_media(leg.channel, answered_endpoint)
        if to_caller is None:
            # Late offer: the caller sent no SDP, so our 200 carries our offer, the codec the
            # callee chose first, and the caller's answer arrives in its ACK (RFC 3261 §13.2.1).
            body = anchoring.own_offer(self.config.server.media_ip, a_port, call.a, self.codecs,
                                       first=answered_endpoint.codec)
        else:
            body, pick = to_caller
            call.media.set_media(call.a.channel, anchoring.offerer_endpoint(call.a_offer, call.a.peer.host, pick))
        self._reply(call.a.txn, call.a.request, 200, now, "OK", to_tag=call.a.local_tag, body=body,
                    headers=[("Allow", ALLOW)])
        call.a.dialog = Dialog.from_uas(call.a.request, call.a.local_tag, self.identity.contact(call.a.peer.transport))
        # Both INVITEs have done their work (their dialogs hold what in-dialog requests
        # need; a retransmitted 2xx is answered from `acks`): the call does not keep them
        # for its whole length, only their transactions do, for 64*T1 (issue 17: memory per call).
        call.a.request = leg.request = None
        call.a.move(LegEvent.ANSWERED)
        call.a.final_status = 200
        self.index.add_dialog(call, call.a)
        call.move(CallEvent.ANSWERED)
        call.answered_at = now
        recorded = decide_recording(self.config, call.seam, call.direction, call.number, call.caller, leg.user)
        self._log(call, "answered", by=leg.who, recorded="yes" if recorded else "no", route=">".join(call.seam.route))
        call.media.answered(now)

    # -- the caller cancels, a branch times out, a late branch is done

    def _cancelled_by_caller(self, txn: Any, now: float) -> None:
        found = self.index.invites.get(txn)
        if found is None:
            return
        call, leg = found
        if leg is call.a and call.unanswered:
            self._fail_call(call, 487, "Request Terminated", now, cause="caller-cancelled")

    def _branch_timed_out(self, call: CallState, leg: Leg, txn: Any, now: float) -> None:
        if leg is not call.a and leg.state in (LegState.CALLING, LegState.EARLY):
            self._branch_failed(call, leg, 408, "Request Timeout", now)
        if txn in self.index.late:
            self.index.forget_late(txn)


def best_failure(statuses: list[int]) -> int:
    for wanted in FAILURE_PREFERENCE:
        if wanted in statuses:
            return wanted
    fours = [s for s in statuses if 400 <= s < 500]
    return fours[0] if fours else (statuses[0] if statuses else 480)


def new_tag() -> str:
    return secrets.token_hex(6)
