"""The B2BUA core driven like a trace: SIP bytes and a fake clock in, SIP bytes out.

No sockets and no real media: the transaction layer, registrar and core are the real
ones; media is a recorder of what signalling asked of it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from b2bua.auth import DigestAuthenticator, compute_response
from b2bua.b2bua import B2BUA
from b2bua.config import load_file
from b2bua.lockout import Lockout
from b2bua.message import Request, Response, parse_message
from b2bua.peer import Peer
from b2bua.registrar import Registrar
from b2bua.strangers import policy_for
from b2bua.sdp import SessionDescription
from b2bua.transaction import TransactionLayer

CONFIG = """
[server]
listen = "192.0.2.1:5060"
media_ip = "192.0.2.1"
rtp_ports = "30000-30099"
realm = "pbx.test"

[organisation]
name = "T"
call_recording = true

[[trunks]]
name = "carrier"
sources = ["198.51.100.7:5060"]
uri = "sip:198.51.100.7:5060"

[[numbers]]
ddi = "441632960000"
record = "yes"
to = "ring_group:sales"

[[numbers]]
ddi = "441632960001"
to = "user:carol"

[[ring_groups]]
name = "sales"
members = ["alice", "bob"]
ring_timeout = 20

[[users]]
name = "alice"
extension = "201"
password = "alice-pw"
record_inbound = "no"

[[users]]
name = "bob"
extension = "202"
password = "bob-pw"

[[users]]
name = "carol"
extension = "203"
password = "carol-pw"
record_outbound = "yes"
"""

TRUNK = Peer("udp", "198.51.100.7", 5060)
ALICE_DESK = Peer("udp", "203.0.113.10", 5062)
ALICE_MOBILE = Peer("udp", "203.0.113.11", 40000)
BOB = Peer("udp", "203.0.113.20", 5060)
CAROL = Peer("udp", "203.0.113.30", 5060)
STRANGER = Peer("udp", "192.0.2.99", 5060)

OFFER = (
    "v=0\r\no=trunk 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    "m=audio 16000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
)


def answer_sdp(ip: str, port: int) -> str:
    return (
        f"v=0\r\no=phone 5 5 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )


@dataclass
class FakeSession:
    call: object
    ports: tuple[int, int] = (30000, 30002)
    media: dict = field(default_factory=dict)
    answered_at: float | None = None
    closed: bool = False
    digits: list = field(default_factory=list)

    def set_media(self, channel, endpoint):
        self.media[channel] = endpoint

    def answered(self, now):
        self.answered_at = now

    def dtmf(self, channel, digit, now):
        self.digits.append((channel, digit))

    def close(self):
        self.closed = True


class FakeMedia:
    def __init__(self):
        self.sessions: list[FakeSession] = []

    def open_session(self, call):
        session = FakeSession(call)
        self.sessions.append(session)
        return session


class Harness:
    """The core with a fake clock; `send` delivers bytes, `out` collects what it sent."""

    def __init__(self, tmp_path: Path, extra_config: str = ""):
        (tmp_path / "flows.toml").write_text(CONFIG + extra_config)
        self.config = load_file(tmp_path / "flows.toml")
        self.now = 1000.0
        self.txn = TransactionLayer()
        auth = DigestAuthenticator("pbx.test", b"k" * 32)
        self.lockout = Lockout(max_failures=3, window=60, duration=600)
        users = {u.name: u.password for u in self.config.users}
        self.registrar = Registrar(users, "pbx.test", None, auth, self.lockout)
        self.media = FakeMedia()
        self.core = B2BUA(self.config, self.txn, self.registrar, auth, self.lockout, self.media,
                          advertised_host="192.0.2.1", port=5060)
        # As the server wires it: strangers answered once, rationed (issue 16).
        self.txn.strangers = policy_for(self.config, self.registrar, self.lockout.summary)
        self.sent: list[tuple[Request | Response, Peer]] = []

    def send(self, text: str, peer: Peer) -> None:
        message = parse_message(text.replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode())
        for event in self.txn.receive(message, peer, self.now):
            self.core.handle(event, self.now)
        self._drain()

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadlines = [d for d in (self.txn.next_deadline(), self.core.next_deadline()) if d is not None and d <= end]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            for event in self.txn.handle_timers(self.now):
                self.core.handle(event, self.now)
            self.core.handle_timers(self.now)
            self._drain()
        self.now = end

    def _drain(self) -> None:
        for data, peer in self.txn.outgoing():
            self.sent.append((parse_message(data), peer))

    def take(self, peer: Peer | None = None, kind: str | int | None = None) -> list[Request | Response]:
        """Remove and return what was sent (to `peer`, of method/status `kind`)."""
        picked, kept = [], []
        for message, to in self.sent:
            match = (peer is None or to == peer) and (
                kind is None
                or (isinstance(message, Request) and message.method == kind)
                or (isinstance(message, Response) and message.status == kind)
            )
            (picked if match else kept).append((message, to))
        self.sent = kept
        return [m for m, _ in picked]

    def one(self, peer: Peer | None, kind: str | int) -> Request | Response:
        found = self.take(peer, kind)
        # UDP retransmissions of the same message count once.
        unique = {m.to_bytes(): m for m in found}
        found = list(unique.values())
        assert len(found) == 1, f"expected one {kind} to {peer}, got {len(found)}; left: {self.sent}"
        return found[0]

    # -- phones

    def register(self, user: str, password: str, peer: Peer, contact: str) -> None:
        call_id = secrets.token_hex(4)
        base = (
            f"REGISTER sip:pbx.test SIP/2.0\n"
            f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch=z9hG4bK{secrets.token_hex(4)};rport\n"
            f"From: <sip:{user}@pbx.test>;tag=r{call_id}\nTo: <sip:{user}@pbx.test>\n"
            f"Call-ID: {call_id}\nContact: <{contact}>\nExpires: 600\nMax-Forwards: 70\n"
        )
        self.send(base + "CSeq: 1 REGISTER\nContent-Length: 0\n\n", peer)
        challenge = self.one(peer, 401)
        auth = digest(challenge.headers.get("WWW-Authenticate"), user, password, "REGISTER", "sip:pbx.test", "Authorization")
        second = base.replace(f"branch=z9hG4bK", f"branch=z9hG4bKx") + f"CSeq: 2 REGISTER\n{auth}\nContent-Length: 0\n\n"
        self.send(second, peer)
        self.one(peer, 200)


def digest(challenge: str, user: str, password: str, method: str, uri: str, header: str) -> str:
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)
    algorithm = re.search(r"algorithm=([\w-]+)", challenge).group(1)
    response = compute_response(algorithm, user, "pbx.test", password, method, uri, nonce,
                                qop="auth", nc="00000001", cnonce="abc")
    return (f'{header}: Digest username="{user}", realm="pbx.test", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc=00000001, cnonce="abc"')


def trunk_invite(ddi: str, call_id: str = "trunk-call-1", branch: str = "z9hG4bKtrunk1") -> str:
    return (
        f"INVITE sip:+{ddi}@192.0.2.1:5060 SIP/2.0\n"
        f"Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch}\n"
        f'From: "Caller" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: <sip:{ddi}@192.0.2.1>\n'
        f"Call-ID: {call_id}\nCSeq: 10 INVITE\nContact: <sip:447700900123@198.51.100.7:5060>\n"
        f"Max-Forwards: 70\nContent-Type: application/sdp\nContent-Length: {len(OFFER)}\n\n{OFFER}"
    )


def respond(request: Request, status: int, reason: str, to_tag: str, peer_contact: str, body: str = "") -> str:
    vias = "".join(f"Via: {v}\n" for v in request.headers.get_all("Via"))
    ctype = "Content-Type: application/sdp\n" if body else ""
    return (
        f"SIP/2.0 {status} {reason}\n{vias}From: {request.headers.get('From')}\n"
        f"To: {request.headers.get('To')};tag={to_tag}\nCall-ID: {request.call_id}\nCSeq: {request.headers.get('CSeq')}\n"
        f"Contact: <{peer_contact}>\n{ctype}Content-Length: {len(body)}\n\n{body}"
    )


@pytest.fixture
def h(tmp_path):
    return Harness(tmp_path)


def test_unknown_number_gets_404(h):
    h.send(trunk_invite("999"), TRUNK)
    assert h.one(TRUNK, 404)
    assert not h.media.sessions


def test_nobody_registered_gets_480_at_once(h):
    h.send(trunk_invite("441632960000"), TRUNK)
    assert h.one(TRUNK, 480)


def test_invite_from_stranger_is_refused_with_403_and_never_forwarded(h):
    invite = trunk_invite("441632960000").replace("198.51.100.7:5060;branch", "192.0.2.99:5060;branch")
    h.send(invite, STRANGER)
    assert h.one(STRANGER, 403)
    assert not h.take(TRUNK, "INVITE")
    assert not h.media.sessions


def test_an_overloaded_media_core_refuses_new_calls_with_503_and_retry_after(h):
    h.media.overloaded = True
    h.send(trunk_invite("441632960000"), TRUNK)
    reply = h.one(TRUNK, 503)
    assert reply.headers.get("Retry-After") == "10" and "overload" in reply.reason
    assert not h.media.sessions
    h.media.overloaded = False  # recovered: calls are taken again
    h.send(trunk_invite("441632960000", call_id="after", branch="z9hG4bKafter"), TRUNK)
    assert h.one(TRUNK, 480)  # (nobody registered here: routed as usual)


def test_ring_group_forks_to_every_contact_and_first_answer_wins(h):
    h.register("alice", "alice-pw", ALICE_DESK, "sip:alice@203.0.113.10:5062;transport=udp;ob")
    h.register("alice", "alice-pw", ALICE_MOBILE, "sip:alice-mobile@10.0.0.5:5060")
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(trunk_invite("441632960000"), TRUNK)
    assert h.one(TRUNK, 100)
    desk = h.one(ALICE_DESK, "INVITE")
    mobile = h.one(ALICE_MOBILE, "INVITE")
    bob = h.one(BOB, "INVITE")
    # A phone is called on the Contact it registered, exactly (behind NAT: at its source address).
    assert desk.uri == "sip:alice@203.0.113.10:5062;transport=udp;ob"
    assert mobile.uri == "sip:alice-mobile@10.0.0.5:5060"
    # A new dialog on the B side: new Call-ID, our tags, our SDP.
    assert desk.call_id != "trunk-call-1" and desk.from_tag != "tr1"
    sdp = SessionDescription.parse(desk.body)
    session = h.media.sessions[0]
    assert "IN IP4 192.0.2.1" in sdp.session_connection() and sdp.first_audio().port == session.ports[1]
    assert session.media[0].remote == ("198.51.100.7", 16000)

    h.send(respond(desk, 180, "Ringing", "d1", "sip:alice@203.0.113.10:5062"), ALICE_DESK)
    h.send(respond(bob, 180, "Ringing", "b1", "sip:bob@203.0.113.20"), BOB)
    assert h.take(TRUNK, 180)
    h.send(respond(desk, 200, "OK", "d1", "sip:alice@203.0.113.10:5062", answer_sdp("203.0.113.10", 7000)), ALICE_DESK)
    assert h.one(ALICE_DESK, "ACK")
    assert h.one(BOB, "CANCEL")
    ok = h.one(TRUNK, 200)
    answer = SessionDescription.parse(ok.body)
    assert answer.first_audio().port == session.ports[0]
    assert session.media[1].remote == ("203.0.113.10", 7000)
    assert session.answered_at == h.now
    # Number yes, ring group dont_care, alice inbound no: not recorded.
    assert session.call.route == ("number:441632960000", "ring_group:sales", "user:alice")
    assert session.call.record_at_answer is False
    assert session.call.user == "alice" and session.call.ddi == "441632960000"
    # The mobile never sent a provisional: its CANCEL waits for one (RFC 3261 §9.1).
    h.send(respond(mobile, 180, "Ringing", "m1", "sip:alice-mobile@10.0.0.5"), ALICE_MOBILE)
    assert h.one(ALICE_MOBILE, "CANCEL")


def answered_call(h) -> tuple[Request, Request]:
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(trunk_invite("441632960000"), TRUNK)
    bob = h.one(BOB, "INVITE")
    h.send(respond(bob, 200, "OK", "b1", "sip:bob@203.0.113.20", answer_sdp("203.0.113.20", 7000)), BOB)
    ok = h.one(TRUNK, 200)
    h.send(
        f"ACK sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKack1\n"
        f"From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: {ok.headers.get('To')}\n"
        f"Call-ID: trunk-call-1\nCSeq: 10 ACK\nContent-Length: 0\n\n",
        TRUNK,
    )
    h.take()
    return bob, ok


def trunk_bye(ok: Response, cseq: int = 11) -> str:
    """The trunk hangs up the answered call `ok` answered."""
    return (
        f"BYE sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKbye{cseq}\n"
        f"From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: {ok.headers.get('To')}\n"
        f"Call-ID: trunk-call-1\nCSeq: {cseq} BYE\nContent-Length: 0\n\n"
    )


def bob_bye(bob: Request, cseq: int = 1) -> str:
    """Bob hangs up, in the dialog of the INVITE `bob` we sent him."""
    return (
        f"BYE sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKpb{cseq}\n"
        f"From: <sip:bob@pbx.test>;tag=b1\nTo: {bob.headers.get('From')}\nCall-ID: {bob.call_id}\n"
        f"CSeq: {cseq} BYE\nContent-Length: 0\n\n"
    )


def bob_holds(bob: Request, cseq: int = 2) -> str:
    """Bob's re-INVITE putting the call on hold (a=sendonly)."""
    hold = answer_sdp("203.0.113.20", 7000).replace("a=sendrecv", "a=sendonly")
    return (
        f"INVITE sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKri{cseq}\n"
        f"From: <sip:bob@pbx.test>;tag=b1\nTo: {bob.headers.get('From')}\nCall-ID: {bob.call_id}\n"
        f"CSeq: {cseq} INVITE\nContact: <sip:bob@203.0.113.20>\nContent-Type: application/sdp\n"
        f"Content-Length: {len(hold)}\n\n{hold}"
    )


def test_answered_call_is_recorded_by_number_yes(h):
    answered_call(h)
    assert h.media.sessions[0].call.record_at_answer is True


def test_bye_from_trunk_ends_both_legs(h):
    bob, ok = answered_call(h)
    h.send(trunk_bye(ok), TRUNK)
    assert h.one(TRUNK, 200)
    bye = h.one(BOB, "BYE")
    assert bye.call_id == bob.call_id and bye.uri == "sip:bob@203.0.113.20"
    assert h.media.sessions[0].closed
    assert not h.core.calls


def test_bye_from_phone_ends_trunk_leg(h):
    bob, _ = answered_call(h)
    h.send(bob_bye(bob, 1), BOB)
    assert h.one(BOB, 200)
    bye = h.one(TRUNK, "BYE")
    assert bye.call_id == "trunk-call-1" and bye.uri == "sip:447700900123@198.51.100.7:5060"
    assert h.media.sessions[0].closed


def test_busy_reaches_caller(h):
    h.register("carol", "carol-pw", CAROL, "sip:carol@203.0.113.30")
    h.send(trunk_invite("441632960001"), TRUNK)
    invite = h.one(CAROL, "INVITE")
    h.send(respond(invite, 486, "Busy Here", "c1", "sip:carol@203.0.113.30"), CAROL)
    assert h.one(CAROL, "ACK")
    assert h.one(TRUNK, 486)
    assert h.media.sessions[0].closed


def test_ring_timeout_gives_480_and_cancels(h):
    h.register("carol", "carol-pw", CAROL, "sip:carol@203.0.113.30")
    h.send(trunk_invite("441632960001"), TRUNK)
    invite = h.one(CAROL, "INVITE")
    h.send(respond(invite, 180, "Ringing", "c1", "sip:carol@203.0.113.30"), CAROL)
    h.take()
    h.advance(29.0)
    assert not h.take(TRUNK, 480)
    h.advance(2.0)  # a number straight to a user rings 30 s
    assert h.one(CAROL, "CANCEL")
    assert h.one(TRUNK, 480)



def test_an_answered_call_leaves_no_ring_deadline_and_never_times_out(h):
    """The ring timeout is a heap entry made when the call forks; answering makes it stale:
    the next deadline is no longer it, and nothing is sent when it would have fired."""
    ringing_at = h.now
    bob, ok = answered_call(h)
    assert h.core.next_deadline() != ringing_at + 30.0
    h.advance(31.0)
    assert h.take() == [] and len(h.core.calls) == 1

def test_caller_cancel_cancels_every_branch(h):
    h.register("alice", "alice-pw", ALICE_DESK, "sip:alice@203.0.113.10:5062")
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(trunk_invite("441632960000"), TRUNK)
    alice, bob = h.one(ALICE_DESK, "INVITE"), h.one(BOB, "INVITE")
    h.send(respond(alice, 180, "Ringing", "a1", "sip:alice@x"), ALICE_DESK)
    h.send(respond(bob, 180, "Ringing", "b1", "sip:bob@x"), BOB)
    h.take()
    h.send(
        "CANCEL sip:+441632960000@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKtrunk1\n"
        "From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: <sip:441632960000@192.0.2.1>\n"
        "Call-ID: trunk-call-1\nCSeq: 10 CANCEL\nContent-Length: 0\n\n",
        TRUNK,
    )
    assert h.one(TRUNK, 200)  # the CANCEL itself
    assert h.one(TRUNK, 487)
    assert h.one(ALICE_DESK, "CANCEL") and h.one(BOB, "CANCEL")


def phone_invite(user: str, peer: Peer, dialled: str, extra: str = "", branch: str = "z9hG4bKph1") -> str:
    sdp = answer_sdp(peer.host, 8000)
    return (
        f"INVITE sip:{dialled}@pbx.test SIP/2.0\nVia: SIP/2.0/UDP {peer.host}:{peer.port};branch={branch};rport\n"
        f"From: <sip:{user}@pbx.test>;tag=ph1\nTo: <sip:{dialled}@pbx.test>\nCall-ID: phone-call-1\n"
        f"CSeq: 1 INVITE\nContact: <sip:{user}@{peer.host}:{peer.port}>\nMax-Forwards: 70\n{extra}"
        f"Content-Type: application/sdp\nContent-Length: {len(sdp)}\n\n{sdp}"
    )


def test_outbound_call_is_challenged_then_sent_to_trunk(h):
    h.register("carol", "carol-pw", CAROL, "sip:carol@203.0.113.30")
    h.send(phone_invite("carol", CAROL, "447700900999"), CAROL)
    challenge = h.one(CAROL, 407)
    assert not h.take(TRUNK, "INVITE")
    auth = digest(challenge.headers.get("Proxy-Authenticate"), "carol", "carol-pw", "INVITE",
                  "sip:447700900999@pbx.test", "Proxy-Authorization")
    h.send(phone_invite("carol", CAROL, "447700900999", extra=auth + "\n", branch="z9hG4bKph2"), CAROL)
    out = h.one(TRUNK, "INVITE")
    assert out.uri == "sip:447700900999@198.51.100.7:5060"
    assert "Proxy-Authorization" not in out.headers
    call = h.media.sessions[0].call
    assert call.direction == "outbound"
    assert [p.role for p in call.parties] == ["external", "user"]
    h.send(respond(out, 200, "OK", "t9", "sip:x@198.51.100.7", answer_sdp("198.51.100.7", 17000)), TRUNK)
    assert h.one(CAROL, 200)
    assert call.route == ("user:carol", "outbound") and call.record_at_answer is True


def test_authenticated_phone_cannot_call_as_another_user(h):
    h.register("carol", "carol-pw", CAROL, "sip:carol@203.0.113.30")
    spoofed = phone_invite("alice", CAROL, "447700900999")
    h.send(spoofed, CAROL)
    challenge = h.one(CAROL, 407)
    auth = digest(challenge.headers.get("Proxy-Authenticate"), "carol", "carol-pw", "INVITE",
                  "sip:447700900999@pbx.test", "Proxy-Authorization")
    h.send(phone_invite("alice", CAROL, "447700900999", extra=auth + "\n", branch="z9hG4bKph2"), CAROL)
    assert h.one(CAROL, 403)
    assert not h.take(TRUNK, "INVITE")


def test_extension_dialling_is_an_internal_call(h):
    h.register("carol", "carol-pw", CAROL, "sip:carol@203.0.113.30")
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(phone_invite("carol", CAROL, "202"), CAROL)
    challenge = h.one(CAROL, 407)
    auth = digest(challenge.headers.get("Proxy-Authenticate"), "carol", "carol-pw", "INVITE",
                  "sip:202@pbx.test", "Proxy-Authorization")
    h.send(phone_invite("carol", CAROL, "202", extra=auth + "\n", branch="z9hG4bKph2"), CAROL)
    invite = h.one(BOB, "INVITE")
    h.send(respond(invite, 200, "OK", "b7", "sip:bob@203.0.113.20", answer_sdp("203.0.113.20", 7000)), BOB)
    assert h.one(CAROL, 200)
    call = h.media.sessions[0].call
    assert call.direction == "internal"
    assert call.route == ("user:carol", "user:bob")
    assert call.record_at_answer is True  # carol's outbound yes, bob's inbound dont_care
    assert [p.name for p in call.parties] == ["carol", "bob"]


def test_options_gets_200_with_allow(h):
    h.send(
        "OPTIONS sip:192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKo1\n"
        "From: <sip:scanner@x>;tag=1\nTo: <sip:192.0.2.1>\nCall-ID: o1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
        STRANGER,
    )
    ok = h.one(STRANGER, 200)
    assert "INVITE" in ok.headers.get("Allow")


def test_reinvite_hold_is_relayed_across(h):
    bob, ok = answered_call(h)
    h.send(bob_holds(bob), BOB)
    reinvite = h.one(TRUNK, "INVITE")
    assert reinvite.call_id == "trunk-call-1"
    assert "a=sendonly" in reinvite.body.decode()
    assert h.media.sessions[0].media[1].direction == "sendonly"
    h.send(respond(reinvite, 200, "OK", "tr1", "sip:x@198.51.100.7",
                   OFFER.replace("a=ptime:20", "a=recvonly")).replace(
        f"To: {reinvite.headers.get('To')};tag=tr1", f"To: {reinvite.headers.get('To')}"), TRUNK)
    assert h.one(TRUNK, "ACK")
    ok2 = h.one(BOB, 200)
    assert "a=recvonly" in ok2.body.decode()


def test_sip_info_digit_goes_to_media(h):
    bob, _ = answered_call(h)
    body = "Signal=*\r\nDuration=160\r\n"
    h.send(
        f"INFO sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 203.0.113.20:5060;branch=z9hG4bKinfo1\n"
        f"From: <sip:bob@pbx.test>;tag=b1\nTo: {bob.headers.get('From')}\nCall-ID: {bob.call_id}\n"
        f"CSeq: 3 INFO\nContent-Type: application/dtmf-relay\nContent-Length: {len(body)}\n\n{body}",
        BOB,
    )
    assert h.one(BOB, 200)
    assert h.media.sessions[0].digits == [(1, "*")]


def test_late_offer_we_offer_on_b_and_take_the_answer_from_ack(h):
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    invite = trunk_invite("441632960000").replace("Content-Type: application/sdp\n", "")
    invite = invite[: invite.index("Content-Length")] + "Content-Length: 0\n\n"
    h.send(invite, TRUNK)
    bob = h.one(BOB, "INVITE")
    our_offer = SessionDescription.parse(bob.body)
    assert our_offer.first_audio().formats[:2] == ["0", "8"]
    h.send(respond(bob, 200, "OK", "b1", "sip:bob@203.0.113.20", answer_sdp("203.0.113.20", 7000)), BOB)
    ok = h.one(TRUNK, 200)
    offer_to_caller = SessionDescription.parse(ok.body)
    # the codec bob chose first, the other law (we transcode), DTMF
    assert offer_to_caller.first_audio().formats == ["0", "8", "101"]
    session = h.media.sessions[0]
    assert 0 not in session.media  # no caller media known until its ACK
    ack_sdp = OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 0 101")
    h.send(
        f"ACK sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKack9\n"
        f"From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: {ok.headers.get('To')}\n"
        f"Call-ID: trunk-call-1\nCSeq: 10 ACK\nContent-Type: application/sdp\nContent-Length: {len(ack_sdp)}\n\n{ack_sdp}",
        TRUNK,
    )
    assert session.media[0].remote == ("198.51.100.7", 16000)


def test_retransmitted_2xx_from_the_callee_is_acked_again_and_keeps_the_call(h):
    """RFC 3261 §13.2.2.4: a 2xx retransmission (our ACK was lost or late) gets the same ACK;
    it is not a second answer, so the answered call is not hung up."""
    bob, _ = answered_call(h)
    h.send(respond(bob, 200, "OK", "b1", "sip:bob@203.0.113.20", answer_sdp("203.0.113.20", 7000)), BOB)
    assert h.one(BOB, "ACK")
    assert not h.take(BOB, "BYE") and not h.take(TRUNK, "BYE")
    assert h.core.calls and not h.media.sessions[0].closed


def test_an_answered_call_keeps_neither_invite_and_still_relays_a_reinvite(h):
    """Once answered, the call lets go of both INVITEs (issue 17: memory per call; their
    transactions keep them 64*T1): a re-INVITE and a 2xx retransmission still work."""
    bob, _ = answered_call(h)
    [call] = h.core.calls.values()
    assert call.a.request is None and call.winner.request is None
    h.send(respond(bob, 200, "OK", "b1", "sip:bob@203.0.113.20", answer_sdp("203.0.113.20", 7000)), BOB)
    assert h.one(BOB, "ACK")
    h.send(bob_holds(bob), BOB)
    assert "a=sendonly" in h.one(TRUNK, "INVITE").body.decode()


def caller_cancels_carol_ringing(h) -> Request:
    h.register("carol", "carol-pw", CAROL, "sip:carol@203.0.113.30")
    h.send(trunk_invite("441632960001"), TRUNK)
    invite = h.one(CAROL, "INVITE")
    h.send(respond(invite, 180, "Ringing", "c1", "sip:carol@203.0.113.30"), CAROL)
    h.take()
    h.send(
        "CANCEL sip:+441632960001@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKtrunk1\n"
        "From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: <sip:441632960001@192.0.2.1>\n"
        "Call-ID: trunk-call-1\nCSeq: 10 CANCEL\nContent-Length: 0\n\n",
        TRUNK,
    )
    assert h.one(TRUNK, 487)
    assert h.one(CAROL, "CANCEL")
    h.take()
    return invite


def test_2xx_crossing_our_cancel_is_acked_and_hung_up(h):
    """RFC 3261 §9.1/§15: a phone that answers as (or after) we cancel it gets ACK then BYE,
    so it is not left in a call nobody is on (pyVoIP ignores CANCEL and answers anyway)."""
    invite = caller_cancels_carol_ringing(h)
    h.send(respond(invite, 200, "OK", "c1", "sip:carol@203.0.113.30", answer_sdp("203.0.113.30", 7000)), CAROL)
    assert h.one(CAROL, "ACK")
    bye = h.one(CAROL, "BYE")
    assert bye.call_id == invite.call_id and bye.uri == "sip:carol@203.0.113.30"
    assert not h.take(TRUNK)  # the caller got its 487; nothing more
    assert not h.core.calls


def test_cancelled_branch_is_forgotten_after_its_487_or_the_cancel_timeout(h):
    invite = caller_cancels_carol_ringing(h)
    h.send(respond(invite, 487, "Request Terminated", "c1", "sip:carol@203.0.113.30"), CAROL)
    assert h.one(CAROL, "ACK")
    assert not h.core.index.invites
    # a phone that never answers the CANCEL: forgotten when the INVITE is given up (64*T1)
    h.send(trunk_invite("441632960001", call_id="trunk-call-2", branch="z9hG4bKtrunk2"), TRUNK)
    second = h.one(CAROL, "INVITE")
    h.send(respond(second, 180, "Ringing", "c2", "sip:carol@203.0.113.30"), CAROL)
    h.advance(31.0)  # ring timeout: 480 to the caller, CANCEL to carol, who never answers it
    assert h.one(TRUNK, 480)
    h.advance(40.0)
    assert len(h.core.index) == 0


# -- Record-Route: record-routing proxies (Kamailio at the edge) on both sides -------------------
# The INVITE reaches us from TRUNK through two proxies; bob's 200 comes back through two more.
# Every in-dialog request carries the route set as Route headers and goes to the hop the leg
# already uses (where its INVITE came from / went to: signalling.Signalling._hop).

EDGE_NEAR = "<sip:198.51.100.7:5060;lr;r2=on;ftag=tr1>"  # the proxy that hands us the INVITE
EDGE_FAR = "<sip:198.51.100.60;lr>"
PHONE_EDGE_NEAR = "<sip:203.0.113.20:5060;lr>"  # the proxy bob's 200 reaches us through
PHONE_EDGE_FAR = "<sip:192.0.2.60;lr>"


def record_routed_call(h) -> tuple[Request, Response]:
    """A trunk call through two record-routing proxies, answered by bob through two more."""
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    invite = trunk_invite("441632960000").replace(
        "Max-Forwards: 70\n", f"Record-Route: {EDGE_NEAR}\nRecord-Route: {EDGE_FAR}\nMax-Forwards: 70\n")
    h.send(invite, TRUNK)
    bob = h.one(BOB, "INVITE")
    assert not bob.headers.get_all("Route")  # a new dialog: no route set yet
    ringing = respond(bob, 180, "Ringing", "b1", "sip:bob@203.0.113.20")
    h.send(ringing, BOB)
    early = h.one(TRUNK, 180)
    # RFC 3261 §12.1.1: a 1xx that creates an early dialog copies Record-Route, in order.
    assert early.headers.get_all("Record-Route") == [EDGE_NEAR, EDGE_FAR]
    answer = respond(bob, 200, "OK", "b1", "sip:bob@10.0.0.9:5062", answer_sdp("203.0.113.20", 7000))
    answer = answer.replace("Contact:", f"Record-Route: {PHONE_EDGE_FAR}, {PHONE_EDGE_NEAR}\nContact:", 1)
    h.send(answer, BOB)
    ok = h.one(TRUNK, 200)
    return bob, ok


def test_our_200_and_180_copy_the_invites_record_route_in_order(h):
    _, ok = record_routed_call(h)
    assert ok.headers.get_all("Record-Route") == [EDGE_NEAR, EDGE_FAR]
    assert [m for m in h.take(TRUNK) if isinstance(m, Response) and m.status >= 300] == []


def test_callee_2xx_record_route_is_reversed_for_our_ack_and_bye(h):
    bob, ok = record_routed_call(h)
    # RFC 3261 §12.1.2: the UAC's route set is the 2xx's Record-Route reversed; the ACK and
    # every later request carry it as Route, to the remote target (the 200's Contact).
    ack = h.one(BOB, "ACK")
    assert ack.uri == "sip:bob@10.0.0.9:5062"
    assert ack.headers.get_all("Route") == [PHONE_EDGE_NEAR, PHONE_EDGE_FAR]
    h.send(trunk_bye(ok), TRUNK)
    assert h.one(TRUNK, 200)
    bye = h.one(BOB, "BYE")
    assert bye.uri == "sip:bob@10.0.0.9:5062" and bye.call_id == bob.call_id
    assert bye.headers.get_all("Route") == [PHONE_EDGE_NEAR, PHONE_EDGE_FAR]


def test_caller_side_requests_follow_the_invites_record_route(h):
    bob, ok = record_routed_call(h)
    h.take()
    # bob puts the call on hold: the re-INVITE reaches the trunk back through its proxies
    # (RFC 3261 §12.1.1: the UAS's route set is the Record-Route in order).
    h.send(bob_holds(bob), BOB)
    reinvite = h.one(TRUNK, "INVITE")
    assert reinvite.uri == "sip:447700900123@198.51.100.7:5060"  # the trunk's Contact
    assert reinvite.headers.get_all("Route") == [EDGE_NEAR, EDGE_FAR]
    h.send(respond(reinvite, 200, "OK", "tr1", "sip:447700900123@198.51.100.7:5060", OFFER).replace(
        f"To: {reinvite.headers.get('To')};tag=tr1", f"To: {reinvite.headers.get('To')}"), TRUNK)
    ack = h.one(TRUNK, "ACK")
    assert ack.headers.get_all("Route") == [EDGE_NEAR, EDGE_FAR]
    assert h.one(BOB, 200)
    # bob hangs up: the BYE to the trunk goes the same way
    h.send(bob_bye(bob, 3), BOB)
    bye = h.one(TRUNK, "BYE")
    assert bye.uri == "sip:447700900123@198.51.100.7:5060"
    assert bye.headers.get_all("Route") == [EDGE_NEAR, EDGE_FAR]


def test_callee_reinvite_ack_is_resent_on_a_2xx_retransmission_and_forgotten_with_the_call(h):
    """The ACK we send the trunk for bob's relayed re-INVITE lives under the trunk's Call-ID:
    it is resent for a 2xx retransmission (RFC 3261 §13.2.2.4) and gone when the call ends
    (it used to stay for ever)."""
    bob, ok = answered_call(h)
    h.send(bob_holds(bob), BOB)
    reinvite = h.one(TRUNK, "INVITE")
    trunk_ok = respond(reinvite, 200, "OK", "tr1", "sip:x@198.51.100.7", OFFER).replace(
        f"To: {reinvite.headers.get('To')};tag=tr1", f"To: {reinvite.headers.get('To')}")
    h.send(trunk_ok, TRUNK)
    first = h.one(TRUNK, "ACK")
    assert h.one(BOB, 200)
    h.advance(40.0)  # the re-INVITE's transaction is long gone: the next copy is a stray 2xx
    h.take()
    h.send(trunk_ok, TRUNK)
    again = h.one(TRUNK, "ACK")
    assert again.to_bytes() == first.to_bytes()
    h.send(bob_bye(bob, 3), BOB)
    assert h.one(TRUNK, "BYE")
    assert len(h.core.index) == 0  # no key of the call is left anywhere
    h.take()
    h.send(trunk_ok, TRUNK)  # a copy after the call: nothing remembers it, nothing is sent
    assert not h.take(TRUNK, "ACK")


def test_every_call_leaves_the_index_empty(h):
    """Answered, cancelled, busy, timed out: once each call ends no key of it is left."""
    bob, ok = answered_call(h)
    h.send(trunk_bye(ok), TRUNK)
    h.register("carol", "carol-pw", CAROL, "sip:carol@203.0.113.30")
    h.send(trunk_invite("441632960001", call_id="busy", branch="z9hG4bKbusy"), TRUNK)
    invite = h.one(CAROL, "INVITE")
    h.send(respond(invite, 486, "Busy Here", "c1", "sip:carol@203.0.113.30"), CAROL)
    h.send(trunk_invite("441632960001", call_id="silent", branch="z9hG4bKsilent"), TRUNK)
    h.advance(100.0)  # rings out (480), the CANCEL is never answered, the INVITE gives up
    assert not h.core.calls and len(h.core.index) == 0


# -- each leg its own codec: a PCMA-only trunk, a PCMU-only phone --------------------------------

PCMA_OFFER = (
    "v=0\r\no=carrier 7 7 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    "m=audio 16000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n"
    "a=fmtp:96 0-15\r\na=ptime:20\r\n"
)
PCMU_ONLY_ANSWER = answer_sdp("203.0.113.20", 7000)  # m=audio 7000 RTP/AVP 0 101


def pcma_trunk_invite(offer: str = PCMA_OFFER) -> str:
    invite = trunk_invite("441632960000")
    return invite[: invite.index("Content-Length")] + f"Content-Length: {len(offer)}\n\n{offer}"


def test_pcma_trunk_to_pcmu_phone_is_answered_and_each_leg_keeps_its_law(h):
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(pcma_trunk_invite(), TRUNK)
    invite = h.one(BOB, "INVITE")
    offered = SessionDescription.parse(invite.body).first_audio()
    # both laws and telephone-event to the phone: the trunk's own first, so a phone with
    # PCMA needs no transcoding; the trunk's event type kept
    assert offered.formats == ["8", "0", "96"]
    assert offered.attributes("rtpmap") == ["8 PCMA/8000", "0 PCMU/8000", "96 telephone-event/8000"]
    h.send(respond(invite, 200, "OK", "b1", "sip:bob@203.0.113.20", PCMU_ONLY_ANSWER), BOB)
    ok = h.one(TRUNK, 200)
    answer = SessionDescription.parse(ok.body).first_audio()
    assert answer.formats == ["8", "96"]  # RFC 3264 §6.1: from the trunk's offer only
    assert answer.attributes("rtpmap") == ["8 PCMA/8000", "96 telephone-event/8000"]
    assert not h.take(TRUNK, 488)
    media = h.media.sessions[0].media
    # media relays PCMA with the trunk and PCMU with the phone: it transcodes between them
    assert (media[0].payload_type, media[0].codec, media[0].dtmf_payload_type) == (8, "PCMA", 96)
    assert (media[1].payload_type, media[1].codec, media[1].dtmf_payload_type) == (0, "PCMU", 101)


def test_a_shared_law_is_kept_end_to_end(h):
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(trunk_invite("441632960000"), TRUNK)  # PCMU, PCMA
    invite = h.one(BOB, "INVITE")
    assert SessionDescription.parse(invite.body).first_audio().formats == ["0", "8", "101"]
    pcma_phone = PCMU_ONLY_ANSWER.replace("RTP/AVP 0 101", "RTP/AVP 8 101")
    h.send(respond(invite, 200, "OK", "b1", "sip:bob@203.0.113.20", pcma_phone), BOB)
    assert SessionDescription.parse(h.one(TRUNK, 200).body).first_audio().formats == ["8", "101"]
    media = h.media.sessions[0].media
    assert media[0].payload_type == media[1].payload_type == 8  # nothing to transcode


def test_early_media_is_answered_in_the_callers_law(h):
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(pcma_trunk_invite(), TRUNK)
    invite = h.one(BOB, "INVITE")
    h.send(respond(invite, 183, "Session Progress", "b1", "sip:bob@203.0.113.20", PCMU_ONLY_ANSWER), BOB)
    progress = h.one(TRUNK, 183)
    assert SessionDescription.parse(progress.body).first_audio().formats == ["8", "96"]
    assert h.media.sessions[0].media[0].codec == "PCMA" and h.media.sessions[0].media[1].codec == "PCMU"


def test_an_offer_with_none_of_our_codecs_gets_488_before_any_phone_rings(h):
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    g729 = PCMA_OFFER.replace("RTP/AVP 8 96", "RTP/AVP 18").replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000")
    h.send(pcma_trunk_invite(g729), TRUNK)
    refused = h.one(TRUNK, 488)
    assert "305" in refused.headers.get("Warning") and "Incompatible media format" in refused.headers.get("Warning")
    assert not h.take(BOB, "INVITE") and not h.media.sessions and not h.core.calls


def test_a_reinvite_offering_none_of_our_codecs_gets_488_and_is_not_relayed(h):
    bob, _ = answered_call(h)
    g729 = bob_holds(bob).replace("RTP/AVP 0 101", "RTP/AVP 18   ")  # same length: Content-Length holds
    h.send(g729, BOB)
    assert h.one(BOB, 488)
    assert not h.take(TRUNK, "INVITE") and h.core.calls


def test_a_reinvite_is_answered_in_the_offerers_law(h):
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(pcma_trunk_invite(), TRUNK)
    invite = h.one(BOB, "INVITE")
    h.send(respond(invite, 200, "OK", "b1", "sip:bob@203.0.113.20", PCMU_ONLY_ANSWER), BOB)
    ok = h.one(TRUNK, 200)
    h.send(f"ACK sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKack1\n"
           f"From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: {ok.headers.get('To')}\n"
           f"Call-ID: trunk-call-1\nCSeq: 10 ACK\nContent-Length: 0\n\n", TRUNK)
    h.take()
    h.send(bob_holds(invite), BOB)  # bob (PCMU only) re-offers
    reinvite = h.one(TRUNK, "INVITE")
    assert SessionDescription.parse(reinvite.body).first_audio().formats == ["0", "8", "101"]
    h.send(respond(reinvite, 200, "OK", "tr1", "sip:x@198.51.100.7", PCMA_OFFER.replace("a=ptime:20", "a=recvonly"))
           .replace(f"To: {reinvite.headers.get('To')};tag=tr1", f"To: {reinvite.headers.get('To')}"), TRUNK)
    to_bob = SessionDescription.parse(h.one(BOB, 200).body).first_audio()
    assert to_bob.formats == ["0", "101"] and to_bob.has_flag("recvonly")
    media = h.media.sessions[0].media
    assert media[0].codec == "PCMA" and media[1].codec == "PCMU"


def test_the_codecs_we_offer_and_accept_follow_media_codecs(tmp_path):
    h = Harness(tmp_path, '\n[media]\ncodecs = ["PCMA"]\n')
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(trunk_invite("441632960000"), TRUNK)  # offers PCMU and PCMA
    invite = h.one(BOB, "INVITE")
    assert SessionDescription.parse(invite.body).first_audio().formats == ["8", "101"]
    pcmu_only = OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 0 101")
    h.send(pcma_trunk_invite(pcmu_only).replace("trunk-call-1", "trunk-call-2").replace("z9hG4bKtrunk1", "z9hG4bKt2"),
           TRUNK)
    assert h.one(TRUNK, 488)


def test_late_offer_each_side_keeps_the_law_it_answered(h):
    """The caller sent no SDP; bob answers our offer PCMU; the caller answers ours (in its
    ACK, RFC 3261 §13.2.1) with PCMA: media uses each side's own law and transcodes."""
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    invite = trunk_invite("441632960000").replace("Content-Type: application/sdp\n", "")
    h.send(invite[: invite.index("Content-Length")] + "Content-Length: 0\n\n", TRUNK)
    bob = h.one(BOB, "INVITE")
    h.send(respond(bob, 200, "OK", "b1", "sip:bob@203.0.113.20", PCMU_ONLY_ANSWER), BOB)
    ok = h.one(TRUNK, 200)
    assert SessionDescription.parse(ok.body).first_audio().formats == ["0", "8", "101"]
    pcma_answer = PCMA_OFFER.replace("a=ptime:20", "a=sendrecv")
    h.send(
        f"ACK sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKack9\n"
        f"From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: {ok.headers.get('To')}\n"
        f"Call-ID: trunk-call-1\nCSeq: 10 ACK\nContent-Type: application/sdp\n"
        f"Content-Length: {len(pcma_answer)}\n\n{pcma_answer}",
        TRUNK,
    )
    media = h.media.sessions[0].media
    assert (media[0].codec, media[0].payload_type, media[0].dtmf_payload_type) == ("PCMA", 8, 96)
    assert (media[1].codec, media[1].payload_type) == ("PCMU", 0)


# -- any order of events: the lifecycle tables hold, nothing is left behind ---------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

STEPS = ["desk_180", "desk_183", "desk_200", "desk_486", "bob_180", "bob_200", "bob_486", "caller_cancel",
         "caller_ack", "caller_bye", "bob_bye", "desk_bye", "bob_200_again", "wait_5", "wait_40"]


def _phone_bye(invite: Request, tag: str, user: str, peer: Peer, cseq: int) -> str:
    return (
        f"BYE sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP {peer.host}:{peer.port};branch=z9hG4bKpb{tag}{cseq}\n"
        f"From: <sip:{user}@pbx.test>;tag={tag}\nTo: {invite.headers.get('From')}\nCall-ID: {invite.call_id}\n"
        f"CSeq: {cseq} BYE\nContent-Length: 0\n\n"
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(STEPS), max_size=12))
def test_any_order_of_answers_cancels_byes_and_timeouts_keeps_the_tables_and_leaves_nothing(tmp_path_factory, steps):
    h = Harness(tmp_path_factory.mktemp("trace"))
    h.register("alice", "alice-pw", ALICE_DESK, "sip:alice@203.0.113.10:5062")
    h.register("bob", "bob-pw", BOB, "sip:bob@203.0.113.20")
    h.send(trunk_invite("441632960000"), TRUNK)
    desk, bob = h.one(ALICE_DESK, "INVITE"), h.one(BOB, "INVITE")
    ok: Response | None = None
    for n, step in enumerate(steps):
        if step.startswith("desk_") and step[5:].isdigit():
            status = int(step[5:])
            body = answer_sdp("203.0.113.10", 7002) if status in (183, 200) else ""
            h.send(respond(desk, status, "X", "d1", "sip:alice@203.0.113.10:5062", body), ALICE_DESK)
        elif step.startswith("bob_") and step[4:].isdigit():
            status = int(step[4:])
            body = answer_sdp("203.0.113.20", 7000) if status == 200 else ""
            h.send(respond(bob, status, "X", "b1", "sip:bob@203.0.113.20", body), BOB)
        elif step == "bob_200_again":
            h.send(respond(bob, 200, "OK", "b1", "sip:bob@203.0.113.20", answer_sdp("203.0.113.20", 7000)), BOB)
        elif step == "caller_cancel":
            h.send("CANCEL sip:+441632960000@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;"
                   "branch=z9hG4bKtrunk1\nFrom: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\n"
                   "To: <sip:441632960000@192.0.2.1>\nCall-ID: trunk-call-1\nCSeq: 10 CANCEL\nContent-Length: 0\n\n",
                   TRUNK)
        elif step in ("caller_ack", "caller_bye"):
            oks = [m for m in h.take(TRUNK, 200) if m.cseq[1] == "INVITE"]
            ok = oks[-1] if oks else ok
            if ok is not None:
                method = "ACK" if step == "caller_ack" else "BYE"
                h.send(f"{method} sip:b2bua@192.0.2.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKs{n}\n"
                       f"From: \"Caller\" <sip:447700900123@198.51.100.7>;tag=tr1\nTo: {ok.headers.get('To')}\n"
                       f"Call-ID: trunk-call-1\nCSeq: {10 if method == 'ACK' else 11 + n} {method}\n"
                       f"Content-Length: 0\n\n", TRUNK)
        elif step == "bob_bye":
            h.send(_phone_bye(bob, "b1", "bob", BOB, 2 + n), BOB)
        elif step == "desk_bye":
            h.send(_phone_bye(desk, "d1", "alice", ALICE_DESK, 2 + n), ALICE_DESK)
        else:
            h.advance(float(step[5:]))
        for call in h.core.calls.values():  # the phases agree with what the legs say
            assert (call.winner is not None) == (call.phase.value in ("answered", "confirmed"))
    h.core.shutdown(h.now)  # whatever is still up is hung up or refused
    h.advance(200.0)  # every transaction and late branch runs out
    assert not h.core.calls and len(h.core.index) == 0
