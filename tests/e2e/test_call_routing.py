"""Issue 2 end to end: real phones (baresip) and a trunk, through the running B2BUA.

The trunk is PyTrunk (a tolerant SIP trunk in Python that also hears its media) or
SIPp; the phones are baresip registered with digest auth. Each test says what the
trunk and the phones see, and what the B2BUA logs.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.peers import Ports, PyTrunk, Sipp

pytestmark = pytest.mark.e2e


def flows(ports: Ports, trunk: str, *, ring_timeout: float = 10, record: str = "no", extra: str = "") -> str:
    return f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
[organisation]
name = "Test"
[[trunks]]
name = "carrier"
sources = ["{trunk}"]
uri = "sip:{trunk}"
[[numbers]]
ddi = "441632960000"
record = "{record}"
to = "ring_group:sales"
[[numbers]]
ddi = "441632960001"
to = "user:alice"
[[ring_groups]]
name = "sales"
members = ["alice", "bob"]
ring_timeout = {ring_timeout}
[[users]]
name = "alice"
extension = "201"
password = "alice-secret"
[[users]]
name = "bob"
extension = "202"
password = "bob-secret"
{extra}'''


@pytest.fixture
def trunk():
    t = PyTrunk()
    yield t
    t.close()


def start(b2bua, trunk, **kw):
    ports = Ports.allocate()
    return b2bua(flows(ports, trunk.address, **kw), extra_args=["--sip-trace"])


def test_trunk_call_answered_then_bye_from_trunk_ends_both_legs(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk)
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    call = trunk.call(pbx.sip_address, "441632960001")
    assert call.wait_answered(10) == 200
    alice.wait_for("established", 5)
    call.rtp.send_tone(440, 1.0, remote=call.remote_media)
    time.sleep(1.2)
    assert len(call.rtp.received()) > 20, "the trunk hears the phone through the B2BUA"
    assert call.bye() == 200
    alice.wait_for("closed", 5)
    pbx.wait_for_log(r"event=ended cause=bye-from-caller")
    assert pbx.recordings() == []  # number dont_care, alice dont_care: never recorded


def test_bye_from_the_phone_reaches_the_trunk(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk)
    alice = baresip("alice", "alice-secret", pbx.sip_address)
    call = trunk.call(pbx.sip_address, "441632960001")
    assert call.wait_answered(10) == 200
    alice.wait_for("established", 5)
    alice.hangup()
    call.wait_ended(5)
    assert trunk.received("BYE"), "the trunk got a BYE"
    pbx.wait_for_log(r"event=ended cause=bye-from-callee")


def test_ring_group_first_answer_wins_and_the_other_phone_is_cancelled(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk)
    alice = baresip("alice", "alice-secret", pbx.sip_address)  # answers at once
    bob = baresip("bob", "bob-secret", pbx.sip_address, auto_answer=False)  # only rings
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(10) == 200
    bob.wait_for("incoming", 5)
    bob.wait_for("closed", 5)  # CANCELled by the B2BUA once alice answered
    pbx.wait_for_log(r"event=answered by=alice")
    assert call.bye() == 200
    alice.wait_for("closed", 5)


def test_busy_phone_gives_the_trunk_its_rejection(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk)
    alice = baresip("alice", "alice-secret", pbx.sip_address, auto_answer=False)
    call = trunk.call(pbx.sip_address, "441632960001")
    alice.wait_for("incoming", 5)
    alice.hangup()  # baresip rejects the ringing call
    status = call.wait_answered(5)
    assert status in (486, 603), f"the phone's rejection reaches the caller as such, got {status}"
    pbx.wait_for_log(rf"event=ended cause={status}")
    assert pbx.recordings() == []


def test_no_answer_ends_with_480_after_ring_timeout(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk, ring_timeout=2)
    bob = baresip("bob", "bob-secret", pbx.sip_address, auto_answer=False)
    alice = baresip("alice", "alice-secret", pbx.sip_address, auto_answer=False)
    began = time.monotonic()
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(8) == 480
    waited = time.monotonic() - began
    assert 1.5 < waited < 6, f"480 came after {waited:.1f}s, ring_timeout is 2s"
    bob.wait_for("closed", 5)
    alice.wait_for("closed", 5)
    pbx.wait_for_log(r"event=no-answer")


def test_cancel_before_answer_gives_487_and_stops_the_ringing(b2bua, baresip, trunk):
    pbx = start(b2bua, trunk)
    alice = baresip("alice", "alice-secret", pbx.sip_address, auto_answer=False)
    call = trunk.call(pbx.sip_address, "441632960001")
    alice.wait_for("incoming", 5)
    call.wait_status(180, 5)
    call.cancel()
    assert call.wait_answered(5) == 487
    alice.wait_for("closed", 5)
    pbx.wait_for_log(r"event=ended cause=caller-cancelled")


def test_sipp_trunk_cancel_scenario(b2bua, baresip, tmp_path):
    ports = Ports.allocate()
    pbx = b2bua(flows(ports, ports.trunk), extra_args=["--sip-trace"])
    alice = baresip("alice", "alice-secret", pbx.sip_address, auto_answer=False)
    Sipp("uac_call_cancel.xml", tmp_path, remote=pbx.sip_address, port=ports.trunk_port,
         service="441632960001").run().check()
    alice.wait_for("closed", 5)


def test_outbound_call_is_authenticated_and_sent_to_the_trunk(b2bua, baresip):
    trunk = PyTrunk(auto_answer=True)
    try:
        pbx = start(b2bua, trunk)
        alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
        alice.dial("447700900999")
        incoming = trunk.wait_for_call(10)
        alice.wait_for("established", 5)
        invite = trunk.received("INVITE")[0]
        assert invite.uri.startswith("sip:447700900999@")
        assert "alice" in invite.header("from")
        assert invite.header("proxy-authorization") is None, "credentials never leave for the trunk"
        assert "407" in pbx.logs(), "the phone was challenged first"
        time.sleep(1.0)
        assert len(incoming.rtp.received()) > 10, "the trunk hears the phone"
        alice.hangup()
        incoming.wait_ended(5)
        pbx.wait_for_log(r"event=ended cause=bye-from-caller")
    finally:
        trunk.close()


def raw_invite(source_port: int, target: str, number: str) -> bytes:
    return (
        f"INVITE sip:{number}@{target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{source_port};branch=z9hG4bKscan{source_port}\r\n"
        f"From: \"friendly-scanner\" <sip:100@127.0.0.1>;tag=scan1\r\nTo: <sip:{number}@{target}>\r\n"
        f"Call-ID: scan-{source_port}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_invite_from_unknown_source_is_refused_and_never_reaches_the_trunk(b2bua, trunk):
    pbx = start(b2bua, trunk)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as scanner:
        scanner.bind(("127.0.0.1", 0))
        scanner.settimeout(3)
        port = scanner.getsockname()[1]
        for number in ("0044123456789", "201", "441632960000"):
            scanner.sendto(raw_invite(port, pbx.sip_address, number), tuple_addr(pbx.sip_address))
            reply = scanner.recv(65535).decode()
            while reply.startswith("SIP/2.0 100"):
                reply = scanner.recv(65535).decode()
            assert reply.startswith("SIP/2.0 403"), reply
    time.sleep(0.5)
    assert trunk.received("INVITE") == []
    assert "reason=unknown-source" in pbx.logs()


def tuple_addr(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def test_unknown_number_gets_404(b2bua, trunk):
    pbx = start(b2bua, trunk)
    call = trunk.call(pbx.sip_address, "449999999999")
    assert call.wait_answered(5) == 404


def test_nobody_registered_gives_480_at_once(b2bua, trunk):
    pbx = start(b2bua, trunk)
    began = time.monotonic()
    call = trunk.call(pbx.sip_address, "441632960000")
    assert call.wait_answered(5) == 480
    assert time.monotonic() - began < 2
    pbx.wait_for_log(r"cause=nobody-registered")


def test_options_over_tcp_is_answered(b2bua, trunk):
    pbx = start(b2bua, trunk)
    host, port = tuple_addr(pbx.sip_address)
    with socket.create_connection((host, port), timeout=3) as conn:
        local = conn.getsockname()[1]
        conn.sendall(
            f"OPTIONS sip:{pbx.sip_address} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:{local};branch=z9hG4bKtcp1\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=t1\r\nTo: <sip:{pbx.sip_address}>\r\nCall-ID: tcp-1\r\n"
            f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode()
        )
        reply = conn.recv(65535).decode()
    assert reply.startswith("SIP/2.0 200") and "Allow:" in reply
