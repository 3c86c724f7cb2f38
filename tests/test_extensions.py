"""Issue 16 extras: an unknown Require option gets 420 with Unsupported (RFC 3261 §8.2.2.3,
RFC 4475 bext01, was 200); duplicated single-value headers get 400 (RFC 4475 multi01, was
403 from the stranger check)."""

from __future__ import annotations

import pytest

from b2bua.message import SipParseError, parse_message
from b2bua.peer import Peer
from tests.test_b2bua import ALICE_DESK, Harness

# RFC 4475 §3.1.2.19 (multi01), with its SDP body.
MULTI01 = (
    "INVITE sip:user@company.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\r\n"
    "Max-Forwards: 70\r\n"
    "CSeq: 0 INVITE\r\n"
    "Call-ID: multi01.98asdh@192.0.2.1\r\n"
    "CSeq: 0 INVITE\r\n"
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\r\n"
    "To: sip:user@company.com\r\n"
    "Call-ID: multi01.98asdh@192.0.2.2\r\n"
    "From: sip:caller@university.edu;tag=3413415\r\n"
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\r\n"
    "From: sip:caller@university.edu;tag=3413415\r\n"
    "Contact: <sip:caller@host5.example.net>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 152\r\n\r\n"
    "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.25\r\ns=-\r\nc=IN IP4 192.0.2.25\r\n"
    "t=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
).encode()

# RFC 4475 §3.3.1 (bext01).
BEXT01 = (
    "OPTIONS sip:user@example.com SIP/2.0\n"
    "To: sip:j_user@example.com\n"
    "From: sip:caller@example.net;tag=242etr\n"
    "Max-Forwards: 6\n"
    "Call-ID: bext01.0ha0isndaksdj\n"
    "Require: siP:foo\n"
    "Proxy-Require: sip:foo\n"
    "CSeq: 8 OPTIONS\n"
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw\n"
    "Content-Length: 0\n\n"
)


@pytest.fixture
def h(tmp_path):
    return Harness(tmp_path)


def test_multi01_duplicated_single_value_headers_get_400() -> None:
    body = MULTI01.split(b"\r\n\r\n", 1)[1]
    assert len(body) == 152  # the RFC says 143; its body as written here is 152 octets
    with pytest.raises(SipParseError) as err:
        parse_message(MULTI01)
    assert err.value.status == 400 and "more than one" in err.value.reason


@pytest.mark.parametrize("name", ["Call-ID", "CSeq", "From", "To", "Max-Forwards"])
def test_each_single_value_header_twice_is_400(name: str) -> None:
    lines = [
        "OPTIONS sip:pbx SIP/2.0", "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", "Max-Forwards: 70",
        "From: <sip:a@x>;tag=1", "To: <sip:b@x>", "Call-ID: c1", "CSeq: 1 OPTIONS",
    ]
    twice = next(line for line in lines if line.startswith(name + ":"))
    data = ("\r\n".join([*lines, twice, "Content-Length: 0"]) + "\r\n\r\n").encode()
    with pytest.raises(SipParseError) as err:
        parse_message(data)
    assert err.value.status == 400 and name in err.value.reason


def test_bext01_unknown_require_gets_420_with_unsupported(h) -> None:
    peer = Peer("udp", "192.0.2.55", 5060)
    h.send(BEXT01, peer)
    reply = h.one(peer, 420)
    assert reply.headers.get("Unsupported") == "siP:foo"


def test_a_registered_phones_invite_requiring_100rel_gets_420(h) -> None:
    h.register("alice", "alice-pw", ALICE_DESK, "sip:alice@203.0.113.10:5062;transport=udp;ob")
    h.take()
    h.send(
        f"INVITE sip:202@pbx.test SIP/2.0\nVia: SIP/2.0/UDP {ALICE_DESK.host}:{ALICE_DESK.port};branch=z9hG4bKrq\n"
        "From: <sip:alice@pbx.test>;tag=a\nTo: <sip:202@pbx.test>\nCall-ID: rq1\nCSeq: 1 INVITE\n"
        "Require: 100rel, timer\nMax-Forwards: 70\nContent-Length: 0\n\n",
        ALICE_DESK,
    )
    reply = h.one(ALICE_DESK, 420)
    assert reply.headers.get("Unsupported") == "100rel, timer"
