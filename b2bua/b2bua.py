"""Calls and legs: the back-to-back user agent itself.

Each call has an A leg (the INVITE we received, where we are the UAS) and one B leg
per branch we forked (where we are the UAC); the first branch to answer wins and the
others are cancelled (RFC 3261 §16.7-style forking done by a UA, §9.1 CANCEL). Nothing
in the signalling of one leg reaches the other as is: each leg has its own Call-ID,
tags, CSeq and SDP (our media address), which is what makes us a B2BUA and lets all
RTP flow through us.

This module never touches a socket or a clock: the server hands it transaction events
with `now`, and it answers through the transaction layer it owns and the media core
it was given.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from b2bua import flows
from rtp.call import Call, Party
from b2bua.config import Config, Number, Trunk, User
from b2bua.dialog import Dialog, copy_record_route, dialog_forming
from b2bua.events import (
    AckReceived,
    AckTimedOut,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)
from b2bua.headers import NameAddr, parse_name_addr, parse_uri
from b2bua.message import Headers, Request, Response, make_response
from b2bua.extensions import unsupported_required
from b2bua.peer import Peer
from b2bua import sdp as sdpmod
from b2bua.transaction import TransactionError
from b2bua.identity import Identity

#: Methods we answer; sent in Allow (RFC 3261 §20.5) so phones know what to try.
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER"
#: RFC 3261 §8.1.1.6: Max-Forwards on requests we originate.
MAX_FORWARDS = 70
#: How often registrations are swept for expiry (seconds).
EXPIRY_SWEEP = 1.0
#: How long a branch INVITE cancelled when its call ended is remembered, so that a 2xx
#: crossing our CANCEL still gets ACK and BYE (RFC 3261 §9.1): past the transaction's own
#: give-up time (64*T1 = 32 s, after which it reports a timeout and is forgotten then).
LATE_ANSWER_WINDOW = 64.0
#: Status we give a caller when the answering branch never sent a usable answer.
NOT_ACCEPTABLE = 488
#: Ranking of branch failures when every branch of a fork failed: a 6xx ends the
#: search (RFC 3261 §16.7 step 6), a busy callee is more telling than no answer.
FAILURE_PREFERENCE = (600, 603, 604, 606, 486, 480, 408)

log = logging.getLogger("b2bua")


class MediaSessionLike(Protocol):
    ports: tuple[int, int]

    def set_media(self, channel: int, endpoint: Any) -> None: ...
    def answered(self, now: float) -> None: ...
    def dtmf(self, channel: int, digit: str, now: float) -> None: ...
    def close(self) -> None: ...


class MediaLike(Protocol):
    def open_session(self, call: Call) -> MediaSessionLike: ...


@dataclass
class Leg:
    """One side of a call from our point of view."""

    peer: Peer
    channel: int  # recording channel of the party on this leg
    request: Request | None = None  # the initial INVITE (received on A, sent on B)
    txn: Any = None  # the INVITE's transaction id
    dialog: Dialog | None = None
    local_tag: str = ""
    user: User | None = None  # the registered user on this leg, if any
    sdp_session: int = 0  # our o= session id towards this leg (RFC 4566 §5.2)
    sdp_version: int = 0
    ended: bool = False
    answered: bool = False
    early_to_tag: str | None = None
    final_status: int | None = None


@dataclass
class CallState:
    """Everything we keep about one call."""

    id: str
    a: Leg
    direction: str
    started: datetime
    started_at: float
    seam: Call
    media: MediaSessionLike | None = None
    branches: list[Leg] = field(default_factory=list)
    winner: Leg | None = None
    number: Number | None = None
    caller: User | None = None
    ring_deadline: float | None = None
    answered_at: float | None = None
    ended: bool = False
    a_acked: bool = False
    awaiting_ack_answer: bool = False  # late offer: the caller's SDP answer comes in its ACK
    provisional_sent: bool = False

    def other(self, leg: Leg) -> Leg | None:
        return self.winner if leg is self.a else self.a


class B2BUA:
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
        self.lockout = lockout
        self.media = media
        self.host = advertised_host
        self.port = port
        self.identity = Identity(advertised_host, port)
        self.calls: dict[str, CallState] = {}
        self._by_dialog: dict[tuple[str, str], tuple[CallState, Leg]] = {}  # (Call-ID, our tag)
        self._by_invite_txn: dict[Any, tuple[CallState, Leg]] = {}
        self._acks: dict[tuple[str, int], tuple[Request, Peer]] = {}
        self._next_sweep = 0.0
        # in-dialog requests relayed across: client txn -> (call, server txn, request, leg it came from)
        self._relays: dict[Any, tuple[CallState, Any, Request, Leg]] = {}
        # branch INVITEs of ended calls still awaiting their final response: txn -> forget-by time
        self._late_branches: dict[Any, float] = {}
        self.wall_clock = wall_clock
        # Since start, for /metrics: "calls" (every call set up), "refused:<reason>" (503s).
        self.counts: dict[str, int] = {}

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
        deadlines = [c.ring_deadline for c in self.calls.values() if c.ring_deadline is not None]
        deadlines.append(self._next_sweep)
        return min(deadlines)

    def handle_timers(self, now: float) -> None:
        for call in list(self.calls.values()):
            if call.ring_deadline is not None and now >= call.ring_deadline:
                call.ring_deadline = None
                self._log(call, "no-answer", timeout=f"{now - call.started_at:.0f}s")
                self._fail_call(call, 480, "Temporarily Unavailable", now, cause="no-answer")
        if now >= self._next_sweep:
            self._next_sweep = now + EXPIRY_SWEEP
            for binding in self.registrar.expire(now):
                log.info("registration event=expired user=%s contact=%s", binding.user, binding.uri)
            for txn in [t for t, until in self._late_branches.items() if now >= until]:
                self._forget_late_branch(txn)

    def shutdown(self, now: float) -> None:
        """SIGTERM: every call gets BYE (or CANCEL/503 before answer); media finalises."""
        for call in list(self.calls.values()):
            if call.winner is not None:
                self._bye(call, call.a, now)
                self._bye(call, call.winner, now)
                self._end(call, now, cause="shutdown")
            else:
                self._fail_call(call, 503, "Service Unavailable", now, cause="shutdown")

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
        trunk = self.config.trunk_for(peer.host, peer.port)
        if trunk is not None:
            self._inbound(txn, request, peer, trunk, now)
            return
        user = self._authenticate_invite(txn, request, peer, now)
        if user is None:
            return
        dialled = (parse_uri(request.uri).user or "").split(";")[0]
        callee = self.config.user_by_extension(dialled) or self.config.user(dialled)
        if callee is not None:
            self._internal(txn, request, peer, user, callee, now)
        else:
            self._outbound(txn, request, peer, user, dialled, now)

    def _authenticate_invite(self, txn: Any, request: Request, peer: Peer, now: float) -> User | None:
        """RFC 3261 §22.3: INVITEs from phones are challenged with 407; strangers get 403."""
        if self.registrar.user_at(peer.host, now=now) is None:
            # Toll-fraud protection: only registered phones may place calls.
            # Counted into the per-source summary (issue 16: never a line per hostile request).
            self.lockout.summary.count(peer.host, "unknown-source-invite", now, line=(
                f"security event=refused reason=unknown-source ip={peer.host} port={peer.port} "
                f"from={_quote(request.headers.get('From'))} to={_quote(request.uri)}"))
            self._reply(txn, request, 403, now, "Forbidden")
            return None
        username, response = self.registrar.authenticate(request, peer, now, proxy=True)
        if response is not None:
            response.headers.set("Server", self.identity.user_agent)
            self.txn.send_response(txn, response, now)
            return None
        user = self.config.user(username or "")
        try:
            from_user = parse_name_addr(request.headers.get("From") or "").uri.user
        except ValueError:
            from_user = None
        if user is None or from_user not in (user.name, user.extension):
            # An authenticated phone must not call as somebody else.
            log.warning("security event=refused reason=from-spoof ip=%s user=%s from=%s", peer.host, username, from_user)
            self._reply(txn, request, 403, now, "Forbidden (From does not match credentials)")
            return None
        return user

    def _new_call(self, txn: Any, request: Request, peer: Peer, direction: str, a_channel: int, now: float) -> CallState | None:
        wall = self.wall_clock()
        call_id = new_call_id(wall)
        body_sdp = self._parse_sdp(request)
        if request.body and body_sdp is None:
            self._reply(txn, request, 400, now, "Bad Request (malformed SDP)")
            return None
        from_na = parse_name_addr(request.headers.get("From") or "")
        to_na = parse_name_addr(request.headers.get("To") or "")
        seam = Call(
            call_id=call_id,
            direction=direction,  # type: ignore[arg-type]
            from_uri=str(from_na.uri),
            to_uri=str(to_na.uri),
            ddi=None,
            user=None,
            started=wall,
            recording_enabled=self.config.organisation.call_recording,
        )
        a = Leg(peer=peer, channel=a_channel, request=request, txn=txn, local_tag=new_tag(),
                sdp_session=secrets.randbelow(2**31))
        call = CallState(id=call_id, a=a, direction=direction, started=seam.started, started_at=now, seam=seam)
        self.calls[call_id] = call
        self.counts["calls"] = self.counts.get("calls", 0) + 1
        self._by_invite_txn[txn] = (call, a)
        self._log(call, "invite", source=f"{peer.host}:{peer.port}", transport=peer.transport,
                  **{"from": seam.from_uri, "to": seam.to_uri, "sip-call-id": request.call_id})
        return call

    def _open_media(self, call: CallState, now: float) -> bool:
        try:
            call.media = self.media.open_session(call.seam)
        except Exception as exc:  # port exhaustion, socket errors: the caller gets 503
            self._log(call, "media-failed", reason=str(exc))
            self.counts["refused:no-media-ports"] = self.counts.get("refused:no-media-ports", 0) + 1
            self._fail_call(call, 503, "Service Unavailable (no media ports)", now, cause="no-media-ports")
            return False
        offer = self._parse_sdp(call.a.request)
        if offer is not None:
            call.media.set_media(call.a.channel, sdpmod.audio_endpoint(offer, call.a.peer.host))
        return True

    def _inbound(self, txn: Any, request: Request, peer: Peer, trunk: Trunk, now: float) -> None:
        dialled = parse_uri(request.uri).user or ""
        number = self.config.number(dialled)
        if number is None:
            log.info("call event=rejected status=404 reason=unknown-number ddi=%s trunk=%s", dialled, trunk.name)
            self._reply(txn, request, 404, now, "Not Found")
            return
        call = self._new_call(txn, request, peer, "inbound", 0, now)
        if call is None:
            return
        call.number = number
        call.seam.ddi = number.ddi
        call.seam.parties = (Party("external", trunk.name), Party("user", ""))
        users = flows.members(self.config, number)
        targets = [(u, b) for u in users for b in self.registrar.contacts(u.name, now)]
        route = " ".join(f"{k}:{n}" for k, n in [("number", number.ddi), number.to])
        self._log(call, "routed", route=route, contacts=len(targets))
        if not targets:
            self._fail_call(call, 480, "Temporarily Unavailable", now, cause="nobody-registered")
            return
        if not self._open_media(call, now):
            return
        timeout = self._ring_timeout(number)
        call.ring_deadline = now + timeout
        for user, binding in targets:
            self._fork(call, binding.uri, binding.peer, user, self._to_user_header(user), now)

    def _ring_timeout(self, number: Number) -> float:
        kind, name = number.to
        group = self.config.ring_group(name) if kind == "ring_group" else None
        return group.ring_timeout if group else 30.0  # a number straight to a user rings as a group would

    def _internal(self, txn: Any, request: Request, peer: Peer, caller: User, callee: User, now: float) -> None:
        call = self._new_call(txn, request, peer, "internal", 0, now)
        if call is None:
            return
        call.caller = caller
        call.seam.parties = (Party("user", caller.name), Party("user", callee.name))
        call.seam.user = callee.name
        targets = self.registrar.contacts(callee.name, now)
        self._log(call, "routed", route=f"user:{caller.name} user:{callee.name}", contacts=len(targets))
        if not targets:
            self._fail_call(call, 480, "Temporarily Unavailable", now, cause="nobody-registered")
            return
        if not self._open_media(call, now):
            return
        call.ring_deadline = now + 30.0
        for binding in targets:
            self._fork(call, binding.uri, binding.peer, callee, self._to_user_header(callee), now)

    def _outbound(self, txn: Any, request: Request, peer: Peer, caller: User, dialled: str, now: float) -> None:
        if not self.config.trunks:
            self._reply(txn, request, 404, now, "Not Found (no trunk for external numbers)")
            return
        if not dialled or not all(c.isdigit() or c in "+*#" for c in dialled):
            self._reply(txn, request, 404, now, "Not Found")
            return
        trunk = self.config.trunks[0]
        call = self._new_call(txn, request, peer, "outbound", 1, now)
        if call is None:
            return
        call.caller = caller
        call.seam.user = caller.name
        call.seam.parties = (Party("external", trunk.name), Party("user", caller.name))
        trunk_uri = parse_uri(trunk.uri)
        target = f"sip:{dialled}@{bracket(trunk_uri.host)}{':' + str(trunk_uri.port) if trunk_uri.port else ''}"
        transport = (trunk_uri.params.get("transport") or "udp").lower()
        dest = Peer(transport, trunk_uri.host.strip("[]"), trunk_uri.port or 5060)
        self._log(call, "routed", route=f"user:{caller.name} outbound", trunk=trunk.name, dialled=dialled)
        if not self._open_media(call, now):
            return
        self._fork(call, target, dest, None, f"<{target}>", now)

    def _to_user_header(self, user: User) -> str:
        return f"<sip:{user.name}@{self.config.server.realm}>"

    def _fork(self, call: CallState, target: str, dest: Peer, user: User | None, to_header: str, now: float) -> None:
        """Send one B-leg INVITE: new Call-ID, tags and CSeq; our SDP (RFC 3261 §8.1.1)."""
        a_req = call.a.request
        b_channel = 1 - call.a.channel
        leg = Leg(peer=dest, channel=b_channel, user=user, local_tag=new_tag(), sdp_session=secrets.randbelow(2**31))
        from_na = parse_name_addr(a_req.headers.get("From") or "")
        caller_user = from_na.uri.user or "anonymous"
        if call.caller is not None:
            caller_user = call.caller.extension or call.caller.name if call.direction == "internal" else call.caller.name
        display = f'"{from_na.display}" ' if from_na.display else ""
        headers = Headers()
        headers.add("Via", self.identity.via(dest.transport))
        headers.add("Max-Forwards", str(MAX_FORWARDS))
        headers.add("From", f"{display}<sip:{caller_user}@{self.identity.host_port}>;tag={leg.local_tag}")
        headers.add("To", to_header)
        headers.add("Call-ID", f"{call.id}-{len(call.branches)}@{self.identity.host}")
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self.identity.contact(dest.transport))
        headers.add("Allow", ALLOW)
        headers.add("User-Agent", self.identity.user_agent)
        body = b""
        offer = self._parse_sdp(a_req)
        if call.media is not None:
            if offer is not None:
                body = self._anchored(offer, call, leg)
            else:
                body = self._own_offer(call, leg)  # late offer from the caller: we offer on B
            headers.add("Content-Type", "application/sdp")
        request = Request("INVITE", target, headers, body)
        leg.request = request
        try:
            leg.txn = self.txn.send_request(request, dest, now)
        except Exception as exc:  # an unroutable contact must not take the call down
            self._log(call, "branch-failed", target=target, reason=str(exc))
            leg.ended = True
            call.branches.append(leg)
            return
        call.branches.append(leg)
        self._by_invite_txn[leg.txn] = (call, leg)
        self._log(call, "ringing-out", target=target, via=f"{dest.transport}:{dest.host}:{dest.port}",
                  user=user.name if user else "trunk")

    def _own_offer(self, call: CallState, leg: Leg, payload_types: tuple[int, ...] = (sdpmod.PCMU, sdpmod.PCMA),
                   dtmf: int | None = 101) -> bytes:
        leg.sdp_version += 1
        return sdpmod.offer(self.config.server.media_ip, call.media.ports[leg.channel], session_id=leg.sdp_session,
                            version=leg.sdp_version, payload_types=payload_types, dtmf_payload_type=dtmf).to_bytes()

    def _anchored(self, sdp: Any, call: CallState, leg: Leg) -> bytes:
        """Our copy of the other side's SDP: our address and the port facing `leg`."""
        leg.sdp_version += 1
        port = call.media.ports[leg.channel]
        return sdpmod.anchor(
            sdp, self.config.server.media_ip, port, session_id=leg.sdp_session, version=leg.sdp_version
        ).to_bytes()

    @staticmethod
    def _parse_sdp(message: Request | Response | None) -> Any:
        if message is None or not message.body:
            return None
        ctype = (message.headers.get("Content-Type") or "application/sdp").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            return None
        try:
            return sdpmod.SessionDescription.parse(message.body)
        except Exception:
            return None

    # -- responses from B legs

    def _response(self, txn: Any, response: Response, now: float) -> None:
        if txn is None:
            self._stray_response(response)
            return
        if txn in self._by_invite_txn:
            call, leg = self._by_invite_txn[txn]
            if leg is not call.a:
                self._branch_response(call, leg, response, now)
            if txn in self._late_branches and response.status >= 200:
                self._forget_late_branch(txn)
            return
        if txn in self._relays:
            self._relay_response(txn, response, now)

    def _forget_late_branch(self, txn: Any) -> None:
        self._late_branches.pop(txn, None)
        found = self._by_invite_txn.pop(txn, None)
        if found is not None:
            call_id = found[0].id
            for key in [k for k in self._acks if k[0].startswith(call_id)]:
                del self._acks[key]

    def _stray_response(self, response: Response) -> None:
        """A retransmitted 2xx to an INVITE we already ACKed: ACK again (RFC 3261 §13.2.2.4)."""
        try:
            number, method = response.cseq
        except Exception:
            return
        if method == "INVITE" and 200 <= response.status < 300:
            sent = self._acks.get((response.call_id, number))
            if sent is not None:
                self.txn.send_stateless(*sent)

    def _branch_response(self, call: CallState, leg: Leg, response: Response, now: float) -> None:
        status = response.status
        if status < 200:
            if status == 100 or call.winner is not None or call.ended:
                return
            leg.early_to_tag = response.to_tag
            answer = self._parse_sdp(response)
            headers: list[tuple[str, str]] = []
            body = b""
            if answer is not None and call.media is not None:
                # Early media (RFC 3960): the caller hears the callee side's tones through us.
                call.media.set_media(leg.channel, sdpmod.audio_endpoint(answer, leg.peer.host))
                body = self._anchored(answer, call, call.a)
            if not call.provisional_sent or body:
                self._log(call, "ringing", status=status, by=leg.user.name if leg.user else "trunk")
            call.provisional_sent = True
            self._reply(call.a.txn, call.a.request, 183 if body else 180, now, to_tag=call.a.local_tag,
                        body=body, headers=headers)
            return
        if 200 <= status < 300:
            self._branch_answered(call, leg, response, now)
            return
        self._branch_failed(call, leg, status, response.reason, now)

    def _branch_failed(self, call: CallState, leg: Leg, status: int, reason: str | None, now: float) -> None:
        leg.ended = True
        leg.final_status = status
        self._log(call, "branch-failed", status=status, by=leg.user.name if leg.user else "trunk")
        if call.winner is None and not call.ended and all(b.ended for b in call.branches):
            best = _best_failure([b.final_status for b in call.branches if b.final_status])
            self._fail_call(call, best, reason if best == status else None, now, cause=str(best))

    def _branch_answered(self, call: CallState, leg: Leg, response: Response, now: float) -> None:
        if leg.answered or (leg.final_status is not None and 200 <= leg.final_status < 300):
            # A retransmission of a 2xx we already took (our ACK was lost or late): the same
            # ACK again (RFC 3261 §13.2.2.4). It is not a second answer: the call stays up.
            sent = self._acks.get((response.call_id, response.cseq[0]))
            if sent is not None:
                self.txn.send_stateless(*sent)
            return
        dialog = Dialog.from_uac(leg.request, response)
        hop = dialog.next_hop(leg.peer)
        ack = dialog.ack(response.cseq[0], self.identity.via(hop.transport))
        self._acks[(response.call_id, response.cseq[0])] = (ack, hop)
        self.txn.send_stateless(ack, hop)
        if call.winner is not None or call.ended:
            # Lost the race (another branch answered first, or the caller gave up, and the 2xx
            # crossed our CANCEL): ACK it, then hang it up (RFC 3261 §9.1, §15).
            leg.ended = True
            leg.final_status = response.status
            self._log(call, "late-answer", by=leg.user.name if leg.user else "trunk", action="bye")
            bye = dialog.create_request("BYE", self.identity.via(hop.transport))
            self.txn.send_request(bye, hop, now)
            return
        answer = self._parse_sdp(response)
        if answer is None or call.media is None:
            bye = dialog.create_request("BYE", self.identity.via(hop.transport))
            self.txn.send_request(bye, hop, now)
            self._fail_call(call, NOT_ACCEPTABLE, "Not Acceptable Here", now, cause="no-sdp-answer")
            return
        leg.dialog = dialog
        leg.answered = True
        call.winner = leg
        call.ring_deadline = None
        self._by_dialog[(dialog.call_id, dialog.local_tag)] = (call, leg)
        for other in call.branches:
            if other is not leg and not other.ended:
                other.ended = True
                self.txn.cancel(other.txn, now)
        answered_endpoint = sdpmod.audio_endpoint(answer, leg.peer.host)
        call.media.set_media(leg.channel, answered_endpoint)
        if self._parse_sdp(call.a.request) is None:
            # Late offer: the caller sent no SDP, so our 200 carries an offer with the codec
            # the callee chose, and the caller's answer arrives in its ACK (RFC 3261 §13.2.1).
            call.awaiting_ack_answer = True
            body = self._own_offer(call, call.a, (answered_endpoint.payload_type,), answered_endpoint.dtmf_payload_type)
        else:
            body = self._anchored(answer, call, call.a)
        self._reply(call.a.txn, call.a.request, 200, now, "OK", to_tag=call.a.local_tag, body=body,
                    headers=[("Allow", ALLOW)])
        call.a.dialog = Dialog.from_uas(call.a.request, call.a.local_tag, self.identity.contact(call.a.peer.transport))
        call.a.answered = True
        self._by_dialog[(call.a.dialog.call_id, call.a.local_tag)] = (call, call.a)
        call.answered_at = now
        recorded = self._decide_recording(call, leg)
        self._log(call, "answered", by=leg.user.name if leg.user else "trunk", recorded="yes" if recorded else "no",
                  route=">".join(call.seam.route))
        call.media.answered(now)

    def _decide_recording(self, call: CallState, leg: Leg) -> bool:
        """Walk the contract's route now that we know who answered."""
        if call.direction == "inbound":
            assert call.number is not None and leg.user is not None
            route = flows.inbound(self.config, call.number, leg.user)
            call.seam.user = leg.user.name
            call.seam.parties[1].name = leg.user.name
        elif call.direction == "outbound":
            route = flows.outbound(call.caller)
        else:
            callee = leg.user or self.config.user(call.seam.user or "")
            route = flows.internal(call.caller, callee)
        call.seam.route = route.steps
        call.seam.record_at_answer = route.recorded(self.config)
        return call.seam.record_at_answer

    # -- the caller cancels, the ring times out, a branch times out

    def _cancelled_by_caller(self, txn: Any, now: float) -> None:
        found = self._by_invite_txn.get(txn)
        if found is None:
            return
        call, leg = found
        if leg is call.a and call.winner is None and not call.ended:
            self._fail_call(call, 487, "Request Terminated", now, cause="caller-cancelled")

    def _timed_out(self, txn: Any, request: Request, now: float) -> None:
        found = self._by_invite_txn.get(txn)
        if found is not None:
            call, leg = found
            if leg is not call.a and not leg.answered and not leg.ended:
                self._branch_failed(call, leg, 408, "Request Timeout", now)
            if txn in self._late_branches:
                self._forget_late_branch(txn)
            return
        relay = self._relays.pop(txn, None)
        if relay is not None:
            _, server_txn, original, _ = relay
            self._reply(server_txn, original, 408, now)

    def _ack_timed_out(self, txn: Any, request: Request, now: float) -> None:
        found = self._by_invite_txn.get(txn)
        if found is None:
            return
        call, leg = found
        if leg is call.a and call.winner is not None and not call.ended and not call.a_acked:
            self._log(call, "ack-timeout")
            self._bye(call, call.winner, now)
            self._bye(call, call.a, now)
            self._end(call, now, cause="no-ack")

    def _fail_call(self, call: CallState, status: int, reason: str | None, now: float, cause: str) -> None:
        """End a call that was never answered: cancel branches, final response to A."""
        if call.ended:
            return
        for leg in call.branches:
            if not leg.ended:
                leg.ended = True
                self.txn.cancel(leg.txn, now)
        self._reply(call.a.txn, call.a.request, status, now, reason, to_tag=call.a.local_tag)
        self._end(call, now, cause=cause, status=status)

    def _end(self, call: CallState, now: float, cause: str, status: int | None = None) -> None:
        if call.ended:
            return
        call.ended = True
        call.ring_deadline = None
        if call.media is not None:
            try:
                call.media.close()
            except Exception as exc:  # finalising must not take the server down
                self._log(call, "media-close-failed", reason=str(exc))
        duration = f"{now - call.answered_at:.1f}s" if call.answered_at is not None else "0s"
        fields = {"cause": cause, "duration": duration}
        if status is not None:
            fields["status"] = str(status)
        self._log(call, "ended", **fields)
        self.calls.pop(call.id, None)
        for key in [k for k, (c, _) in self._by_dialog.items() if c is call]:
            del self._by_dialog[key]
        for key, (_, leg) in [(k, v) for k, v in self._by_invite_txn.items() if v[0] is call]:
            if leg is not call.a and not leg.answered and leg.final_status is None and leg.txn is not None:
                # Cancelled, final response not in yet: a 2xx may still cross our CANCEL.
                self._late_branches[key] = now + LATE_ANSWER_WINDOW
                continue
            del self._by_invite_txn[key]
        for key in [k for k in self._acks if k[0].startswith(call.id)]:
            del self._acks[key]
        for key in [k for k, r in self._relays.items() if r[0] is call]:
            del self._relays[key]

    # -- in-dialog requests

    def _in_dialog(self, txn: Any, request: Request, peer: Peer, to_tag: str, now: float) -> None:
        found = self._by_dialog.get((request.call_id, to_tag))
        if found is None:
            if request.method != "ACK":
                self._reply(txn, request, 481, now, "Call/Transaction Does Not Exist")
            return
        call, leg = found
        reject = leg.dialog.receive_request(request)
        if reject is not None:
            self._reply(txn, request, reject, now)
            return
        method = request.method
        if method == "BYE":
            self._reply(txn, request, 200, now)
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
        found = self._by_dialog.get((request.call_id, request.to_tag or ""))
        if found is None:
            return
        call, leg = found
        if leg is call.a:
            call.a_acked = True
            answer = self._parse_sdp(request)
            if call.awaiting_ack_answer and answer is not None and call.media is not None:
                call.awaiting_ack_answer = False
                call.media.set_media(leg.channel, sdpmod.audio_endpoint(answer, leg.peer.host))

    def _bye(self, call: CallState, leg: Leg, now: float) -> None:
        if leg.dialog is None or leg.ended:
            return
        leg.ended = True
        hop = leg.dialog.next_hop(leg.peer)
        bye = leg.dialog.create_request("BYE", self.identity.via(hop.transport))
        try:
            self.txn.send_request(bye, hop, now)
        except Exception as exc:
            self._log(call, "bye-failed", reason=str(exc))

    def _relay_offer(self, call: CallState, leg: Leg, txn: Any, request: Request, now: float) -> None:
        """re-INVITE/UPDATE (hold, resume, codec change): relayed across with our SDP."""
        other = call.other(leg)
        if other is None or other.dialog is None or other.ended:
            self._reply(txn, request, 481, now)
            return
        offer = self._parse_sdp(request)
        body = b""
        if offer is not None and call.media is not None:
            call.media.set_media(leg.channel, sdpmod.audio_endpoint(offer, leg.peer.host))
            body = self._anchored(offer, call, other)
        hop = other.dialog.next_hop(other.peer)
        out = other.dialog.create_request(
            request.method, self.identity.via(hop.transport), contact=self.identity.contact(hop.transport),
            body=body, headers=[("Content-Type", "application/sdp")] if body else [],
        )
        client = self.txn.send_request(out, hop, now)
        self._relays[client] = (call, txn, request, leg)

    def _relay_response(self, client: Any, response: Response, now: float) -> None:
        call, server_txn, original, from_leg = self._relays[client]
        if response.status < 200:
            if response.status != 100:
                self._reply(server_txn, original, response.status, now, response.reason)
            return
        del self._relays[client]
        to_leg = call.other(from_leg)
        if call.ended:
            return
        body = b""
        if 200 <= response.status < 300:
            if to_leg is not None and to_leg.dialog is not None:
                to_leg.dialog.target_refresh(response)  # RFC 3261 §12.2.1.2
            if original.method == "INVITE" and to_leg is not None and to_leg.dialog is not None:
                hop = to_leg.dialog.next_hop(to_leg.peer)
                ack = to_leg.dialog.ack(response.cseq[0], self.identity.via(hop.transport))
                self._acks[(response.call_id, response.cseq[0])] = (ack, hop)
                self.txn.send_stateless(ack, hop)
            answer = self._parse_sdp(response)
            if answer is not None and call.media is not None and to_leg is not None:
                call.media.set_media(to_leg.channel, sdpmod.audio_endpoint(answer, to_leg.peer.host))
                body = self._anchored(answer, call, from_leg)
        self._reply(server_txn, original, response.status, now, response.reason, body=body)

    def _info(self, call: CallState, leg: Leg, txn: Any, request: Request, now: float) -> None:
        """SIP INFO digits (application/dtmf-relay): handed to media, which applies *1."""
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype in ("application/dtmf-relay", "application/dtmf"):
            digit = parse_dtmf_info(request.body)
            if digit and call.media is not None:
                call.media.dtmf(leg.channel, digit, now)
            self._reply(txn, request, 200, now)
        else:
            self._reply(txn, request, 415 if request.body else 200, now)

    # ------------------------------------------------------------------ logs

    def _log(self, call: CallState, event: str, **fields: Any) -> None:
        extra = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        log.info("call=%s event=%s %s", call.id, event, extra)


def _best_failure(statuses: list[int]) -> int:
    for wanted in FAILURE_PREFERENCE:
        if wanted in statuses:
            return wanted
    fours = [s for s in statuses if 400 <= s < 500]
    return fours[0] if fours else (statuses[0] if statuses else 480)


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


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


def request_transport(request: Request) -> str:
    try:
        return request.via[0].transport.lower()
    except Exception:
        return "udp"


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def new_call_id(wall: datetime) -> str:
    """Our own call identifier: names the recording, appears in every log line.

    Sorts by time (an admin lists a day's directory in call order) and is unique
    without coordination (random suffix).
    """
    return wall.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def new_tag() -> str:
    return secrets.token_hex(6)
