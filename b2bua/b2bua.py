"""Calls and legs: the back-to-back user agent itself.

Each call has an A leg (the INVITE we received, where we are the UAS) and one B leg
per branch we forked (where we are the UAC); the first branch to answer wins and the
others are cancelled. Nothing in the signalling of one leg reaches the other as is:
each leg has its own Call-ID, tags, CSeq and SDP (our media address), which is what
makes us a B2BUA and lets all RTP flow through us.

This module is the entry point and the call's lifecycle: events in (`handle`), timers
(`next_deadline`, `handle_timers`), new calls, and how a call ends. The concepts live
beside it: routing.py (who may call, where it goes), forking.py (ring every contact,
cancel the others), in_dialog.py (ACK, BYE, re-INVITE, INFO between the legs),
anchoring.py (the SDP we send), call_state.py (the lifecycle tables and the index).

It never touches a socket or a clock: the server hands it transaction events with
`now`, and it answers through the transaction layer it owns and the media core it was
given.
"""

from __future__ import annotations

import heapq
import logging
import secrets
from datetime import datetime, timezone
from typing import Any, Callable

from b2bua import anchoring
from rtp.call import Call
from b2bua.call_state import CallEvent, CallIndex, CallPhase, CallState, Leg, LegEvent, LegState
from b2bua.codecs import CodecPolicy
from b2bua.config import Config
from b2bua.events import (
    AckReceived,
    AckTimedOut,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)
from b2bua.forking import LATE_ANSWER_WINDOW, Forking, new_tag
from b2bua.extensions import unsupported_required
from b2bua.identity import Identity
from b2bua.in_dialog import InDialogRelay, parse_dtmf_info  # noqa: F401 - parse_dtmf_info: public here before
from b2bua.message import Request, Response
from b2bua.peer import Peer
from b2bua.routing import Refusal, Route, bracket, route_invite  # noqa: F401 - bracket: public here before
from b2bua.signalling import (  # noqa: F401 - MediaSessionLike, request_transport: public here before
    ALLOW,
    NOT_ACCEPTABLE,
    MediaLike,
    MediaSessionLike,
    incompatible_media,
    request_transport,
)

#: How often registrations are swept for expiry (seconds).
EXPIRY_SWEEP = 1.0

log = logging.getLogger("b2bua")


class B2BUA(Forking, InDialogRelay):
    """Routes calls by `flows.toml` and keeps both legs of each in step."""

    def __init__(
        self,
        config: Config,
        transactions: Any,
        registrar: Any,
        authenticator: Any,
        lockout: Any,
        media: MediaLike,
        *,
        advertised_host: str,
        port: int,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.config = config
        self.txn = transactions
        self.registrar = registrar
        self.auth = authenticator
        self.lockout = lockout  # its per-source summary counts strangers' INVITEs (issue 16)
        self.media = media
        self.host = advertised_host
        self.port = port
        self.identity = Identity(advertised_host, port)
        self.index = CallIndex()
        self.codecs = CodecPolicy(config.media.codecs)
        self._next_sweep = 0.0
        # Ring timeouts as a heap of (deadline, n, call): an entry whose call's ring_deadline
        # has since changed (answered, ended) is stale and skipped. Why not a look at every
        # call: next_deadline runs after every SIP message, and at 2,000 calls that scan was
        # ~4% of the process during setup (py-spy, bench/load.py).
        self._rings: list[tuple[float, int, CallState]] = []
        self._rings_n = 0
        self.wall_clock = wall_clock
        # Since start, for /metrics: "calls" (every call set up), "refused:<reason>" (503s).
        self.counts: dict[str, int] = {}

    @property
    def calls(self) -> dict[str, CallState]:
        """The calls in progress, by our call id."""
        return self.index.calls

    # ------------------------------------------------------------------ events in

    def handle(self, event: Any, now: float) -> None:
        """Feed one transaction-layer event."""
        if isinstance(event, RequestReceived):
            self._request(event.txn_id, event.request, event.peer, now)
        elif isinstance(event, ResponseReceived):
            self._response(event.txn_id, event.response, now)
        elif isinstance(event, AckReceived):
            self._ack(event.request, now)
        elif isinstance(event, CancelReceived):
            self._cancelled_by_caller(event.txn_id, now)
        elif isinstance(event, TransactionTimedOut):
            self._timed_out(event.txn_id, event.request, now)
        elif isinstance(event, AckTimedOut):
            self._ack_timed_out(event.txn_id, event.request, now)

    def next_deadline(self) -> float | None:
        rings = self._rings
        while rings and rings[0][2].ring_deadline != rings[0][0]:
            heapq.heappop(rings)  # stale: that call was answered or ended since
        return min(rings[0][0], self._next_sweep) if rings else self._next_sweep

    def _ring_until(self, call: CallState, deadline: float) -> None:
        call.ring_deadline = deadline
        self._rings_n += 1
        heapq.heappush(self._rings, (deadline, self._rings_n, call))

    def handle_timers(self, now: float) -> None:
        rings = self._rings
        while rings and rings[0][0] <= now:
            deadline, _, call = heapq.heappop(rings)
            if call.ring_deadline == deadline and self.calls.get(call.id) is call:
                call.ring_deadline = None
                self._log(call, "no-answer", timeout=f"{now - call.started_at:.0f}s")
                self._fail_call(call, 480, "Temporarily Unavailable", now, cause="no-answer")
        if now >= self._next_sweep:
            self._next_sweep = now + EXPIRY_SWEEP
            for binding in self.registrar.expire(now):
                log.info("registration event=expired user=%s contact=%s", binding.user, binding.uri)
            for txn in self.index.expired_late(now):
                self.index.forget_late(txn)

    def shutdown(self, now: float) -> None:
        """SIGTERM: every call gets BYE (or CANCEL/503 before answer); media finalises."""
        for call in list(self.calls.values()):
            if call.unanswered:
                self._fail_call(call, 503, "Service Unavailable", now, cause="shutdown")
            else:
                self._hang_up(call, now, cause="shutdown")

    # ------------------------------------------------------------------ requests

    def _request(self, txn: Any, request: Request, peer: Peer, now: float) -> None:
        method = request.method
        if unsupported := unsupported_required(request):  # RFC 3261 §8.2.2.3
            self._reply(txn, request, 420, now, "Bad Extension", headers=[("Unsupported", ", ".join(unsupported))])
            return
        to_tag = request.to_tag
        if to_tag:
            self._in_dialog(txn, request, peer, to_tag, now)
        elif method == "INVITE":
            self._invite(txn, request, peer, now)
        elif method == "REGISTER":
            self._register(txn, request, peer, now)
        elif method == "OPTIONS":
            self._reply(txn, request, 200, now, headers=[("Allow", ALLOW), ("Accept", "application/sdp")])
        elif method == "BYE":
            self._reply(txn, request, 481, now)
        elif method in ("ACK", "CANCEL"):
            pass  # the transaction layer deals with these
        else:
            self._reply(txn, request, 405, now, headers=[("Allow", ALLOW)])

    def _register(self, txn: Any, request: Request, peer: Peer, now: float) -> None:
        """RFC 3261 §10.3 is the registrar's; here each added or removed binding is logged."""
        try:
            user = request.to.uri.user or ""
        except ValueError:
            user = ""
        before = {b.uri for b in self.registrar.contacts(user, now)} if user else set()
        response = self.registrar.handle(request, peer, now)
        self.txn.send_response(txn, response, now)
        if response.status == 200 and user:
            after = {b.uri: b for b in self.registrar.contacts(user, now)}
            for uri in after.keys() - before:
                log.info("registration event=added user=%s contact=%s source=%s:%s:%d expires=%d", user, uri,
                         peer.transport, peer.host, peer.port, self.registrar.expires_in(after[uri], now))
            for uri in before - after.keys():
                log.info("registration event=removed user=%s contact=%s", user, uri)
        elif response.status == 403:
            log.debug("registration event=refused user=%s source=%s:%d", user, peer.host, peer.port)

    # -- new calls

    def _invite(self, txn: Any, request: Request, peer: Peer, now: float) -> None:
        if getattr(self.media, "overloaded", False):
            # RFC 3261 §21.5.4: the carrier or phone retries later or elsewhere, and the
            # calls already up keep a core that can carry them.
            log.warning("call=%s event=refused reason=overload source=%s:%d calls=%d", request.call_id, peer.host,
                        peer.port, len(getattr(self.media, "sessions", ())))
            self.counts["refused:overload"] = self.counts.get("refused:overload", 0) + 1
            self._reply(txn, request, 503, now, "Service Unavailable (overloaded)", headers=[("Retry-After", "10")])
            return
        decision = route_invite(self.config, self.registrar, self.lockout.summary, request, peer, now)
        if isinstance(decision, Refusal):
            self._refuse(txn, request, decision, now)
            return
        call = self._new_call(txn, request, peer, decision, now)
        if call is None:
            return
        self._log(call, "routed", **decision.log_fields)
        if not decision.targets:
            self._fail_call(call, 480, "Temporarily Unavailable", now, cause="nobody-registered")
            return
        if not self._open_media(call, now):
            return
        if decision.ring_timeout is not None:
            self._ring_until(call, now + decision.ring_timeout)
        call.move(CallEvent.FORKED)
        for target in decision.targets:
            self._fork(call, target, now)
        if all(leg.over for leg in call.branches):  # not one contact could be sent to
            self._fail_call(call, 480, "Temporarily Unavailable", now, cause="unreachable")

    def _refuse(self, txn: Any, request: Request, refusal: Refusal, now: float) -> None:
        if refusal.response is not None:  # the registrar's challenge (407) or lockout (403)
            refusal.response.headers.set("Server", self.identity.user_agent)
            self.txn.send_response(txn, refusal.response, now)
        else:
            self._reply(txn, request, refusal.status, now, refusal.reason, headers=refusal.headers)

    def _new_call(self, txn: Any, request: Request, peer: Peer, route: Route, now: float) -> CallState | None:
        offer = anchoring.parse_sdp(request)  # the caller's SDP, parsed once for the call
        if request.body and offer is None:
            self._reply(txn, request, 400, now, "Bad Request (malformed SDP)")
            return None
        if offer is not None and not self.codecs.usable(offer):
            # Nothing we could decode, record or transcode: refused before any phone rings.
            log.info("call event=rejected status=488 reason=no-common-codec sip-call-id=%s source=%s:%d",
                     request.call_id, peer.host, peer.port)
            self._reply(txn, request, NOT_ACCEPTABLE, now, headers=[incompatible_media(self.identity)])
            return None
        wall = self.wall_clock()
        call_id = new_call_id(wall)
        from_na = request.from_
        to_na = request.to
        seam = Call(
            call_id=call_id,
            direction=route.direction,  # type: ignore[arg-type]
            from_uri=str(from_na.uri),
            to_uri=str(to_na.uri),
            ddi=route.number.ddi if route.number is not None else None,
            user=route.user,
            started=wall,
            recording_enabled=self.config.organisation.call_recording,
            parties=route.parties,
        )
        a = Leg(peer=peer, channel=route.a_channel, request=request, txn=txn, local_tag=new_tag(),
                sdp_session=secrets.randbelow(2**31))
        call = CallState(id=call_id, a=a, direction=route.direction, started=seam.started, started_at=now, seam=seam,
                         a_offer=offer, number=route.number, caller=route.caller)
        self.index.add_call(call)
        self.counts["calls"] = self.counts.get("calls", 0) + 1
        self.index.add_invite(call, a)
        self._log(call, "invite", source=f"{peer.host}:{peer.port}", transport=peer.transport,
                  **{"from": seam.from_uri, "to": seam.to_uri, "sip-call-id": request.call_id})
        return call

    def _open_media(self, call: CallState, now: float) -> bool:
        try:
            call.media = self.media.open_session(call.seam)
        except Exception as exc:  # noqa: BLE001 - port exhaustion, socket errors: the caller gets 503
            self._log(call, "media-failed", reason=str(exc))
            self.counts["refused:no-media-ports"] = self.counts.get("refused:no-media-ports", 0) + 1
            self._fail_call(call, 503, "Service Unavailable (no media ports)", now, cause="no-media-ports")
            return False
        if call.a_offer is not None:
            call.media.set_media(call.a.channel, anchoring.endpoint(call.a_offer, call.a.peer.host))
        return True

    # -- responses from B legs and in-dialog relays

    def _response(self, txn: Any, response: Response, now: float) -> None:
        if txn is None:
            self._stray_response(response)
            return
        found = self.index.invites.get(txn)
        if found is not None:
            call, leg = found
            if leg is not call.a:
                self._branch_response(call, leg, response, now)
            if txn in self.index.late and response.status >= 200:
                self.index.forget_late(txn)
            return
        if txn in self.index.relays:
            self._relay_response(txn, response, now)

    # -- timeouts

    def _timed_out(self, txn: Any, request: Request, now: float) -> None:
        found = self.index.invites.get(txn)
        if found is not None:
            self._branch_timed_out(found[0], found[1], txn, now)
            return
        self._relay_timed_out(txn, now)

    def _ack_timed_out(self, txn: Any, request: Request, now: float) -> None:
        """RFC 3261 §13.3.1.4: no ACK for our 2xx within 64*T1: the call is over."""
        found = self.index.invites.get(txn)
        if found is None:
            return
        call, leg = found
        if leg is call.a and call.phase is CallPhase.ANSWERED:
            self._log(call, "ack-timeout")
            self._hang_up(call, now, cause="no-ack")

    # -- how a call ends

    def _hang_up(self, call: CallState, now: float, cause: str) -> None:
        """End an answered call: BYE on both legs."""
        if call.winner is not None:
            self._bye(call, call.winner, now)
        self._bye(call, call.a, now)
        self._end(call, now, cause=cause)

    def _fail_call(self, call: CallState, status: int, reason: str | None, now: float, cause: str) -> None:
        """End a call that was never answered: cancel branches, final response to A."""
        if not call.unanswered:
            return
        self._cancel_branches(call, now)
        self._reply(call.a.txn, call.a.request, status, now, reason, to_tag=call.a.local_tag)
        if call.a.state in (LegState.CALLING, LegState.EARLY):
            call.a.move(LegEvent.REJECTED)
        call.a.final_status = status
        self._end(call, now, cause=cause, status=status)

    def _end(self, call: CallState, now: float, cause: str, status: int | None = None) -> None:
        if call.ended:
            return
        call.move(CallEvent.FAILED if call.unanswered else CallEvent.HUNG_UP)
        call.ring_deadline = None
        if call.media is not None:
            try:
                call.media.close()
            except Exception as exc:  # noqa: BLE001 - finalising must not take the server down
                self._log(call, "media-close-failed", reason=str(exc))
        duration = f"{now - call.answered_at:.1f}s" if call.answered_at is not None else "0s"
        fields = {"cause": cause, "duration": duration}
        if status is not None:
            fields["status"] = str(status)
        self._log(call, "ended", **fields)
        self.index.forget(call, now, LATE_ANSWER_WINDOW)


def new_call_id(wall: datetime) -> str:
    """Our own call identifier: names the recording, appears in every log line.

    Sorts by time (an admin lists a day's directory in call order) and is unique
    without coordination (random suffix).
    """
    return wall.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
