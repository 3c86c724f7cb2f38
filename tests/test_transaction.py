"""RFC 3261 §17 transactions (with RFC 6026) driven by byte fixtures and a fake clock.

Each test reads as a trace: messages in at a time `now`, events and bytes out. The
clock is a float the test advances; the 32-second timers cost nothing.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b2bua.events import (
    AckReceived,
    AckTimedOut,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)
from b2bua.message import Request, Response, make_response, parse_message
from b2bua.peer import Peer
from b2bua.transaction import State, TransactionError, TransactionLayer

ALICE = Peer("udp", "192.0.2.10", 5060)  # a phone calling us
ALICE_NAT = Peer("udp", "203.0.113.7", 40123)  # the same phone seen through a NAT
ALICE_TCP = Peer("tcp", "192.0.2.10", 50312)
BOB = Peer("udp", "198.51.100.20", 5060)  # a phone we call
BOB_TCP = Peer("tcp", "198.51.100.20", 5060)

# -- requests a phone sends us (server side) ---------------------------------------------

INVITE_IN = (
    b"INVITE sip:bob@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

INVITE_IN_RPORT = INVITE_IN.replace(b"branch=z9hG4bK776asdhds", b"branch=z9hG4bK776asdhds;rport")

# ACK for a non-2xx: same branch as the INVITE, To tag of our response (RFC 3261 §17.1.1.3).
ACK_NON_2XX_IN = (
    b"ACK sip:bob@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=b2b-1\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 ACK\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# ACK for a 2xx: a new branch, sent to the Contact (RFC 3261 §13.2.2.4).
ACK_2XX_IN = (
    b"ACK sip:b2bua@198.51.100.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnewack01\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=b2b-1\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 ACK\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

CANCEL_IN = (
    b"CANCEL sip:bob@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 CANCEL\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

OPTIONS_IN = (
    b"OPTIONS sip:b2bua@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKopt1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:b2bua@198.51.100.1>\r\n"
    b"From: <sip:alice@atlanta.example.com>;tag=opt-tag\r\n"
    b"Call-ID: options-1@192.0.2.10\r\n"
    b"CSeq: 7 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# An RFC 2543 phone: no magic cookie in the branch (RFC 3261 §17.2.3's fallback).
INVITE_2543 = (
    b"INVITE sip:bob@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.30:5060\r\n"
    b"To: <sip:bob@198.51.100.1>\r\n"
    b"From: <sip:carol@192.0.2.30>;tag=old-1\r\n"
    b"Call-ID: 2543-call@192.0.2.30\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:carol@192.0.2.30>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
ACK_2543 = (
    b"ACK sip:bob@198.51.100.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.30:5060\r\n"
    b"To: <sip:bob@198.51.100.1>;tag=b2b-9\r\n"
    b"From: <sip:carol@192.0.2.30>;tag=old-1\r\n"
    b"Call-ID: 2543-call@192.0.2.30\r\n"
    b"CSeq: 1 ACK\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
CAROL = Peer("udp", "192.0.2.30", 5060)

# -- requests we send and what the far end answers (client side) -----------------------

INVITE_OUT = (
    b"INVITE sip:bob@198.51.100.20:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKb2b0001;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy1.example.com;lr>\r\n"
    b"Route: <sip:proxy2.example.com;lr>\r\n"
    b"From: <sip:alice@198.51.100.1:5060>;tag=b2b-from\r\n"
    b"To: <sip:bob@198.51.100.20>\r\n"
    b"Call-ID: leg-b-1@198.51.100.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:b2bua@198.51.100.1:5060>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def response_to_invite_out(status: int, reason: str, tag: str | None = "bob-tag", extra: bytes = b"") -> bytes:
    to = b"To: <sip:bob@198.51.100.20>" + (b";tag=" + tag.encode() if tag else b"")
    return (
        f"SIP/2.0 {status} {reason}\r\n".encode()
        + b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKb2b0001;rport=5060;received=198.51.100.1\r\n"
        + b"From: <sip:alice@198.51.100.1:5060>;tag=b2b-from\r\n"
        + to
        + b"\r\n"
        + b"Call-ID: leg-b-1@198.51.100.1\r\n"
        + b"CSeq: 1 INVITE\r\n"
        + extra
        + b"Content-Length: 0\r\n"
        + b"\r\n"
    )


TRYING_100 = response_to_invite_out(100, "Trying", tag=None)
RINGING_180 = response_to_invite_out(180, "Ringing")
OK_200 = response_to_invite_out(200, "OK", extra=b"Contact: <sip:bob@198.51.100.20>\r\n")
BUSY_486 = response_to_invite_out(486, "Busy Here")

BYE_OUT = (
    b"BYE sip:bob@198.51.100.20:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKbye0001;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@198.51.100.1:5060>;tag=b2b-from\r\n"
    b"To: <sip:bob@198.51.100.20>;tag=bob-tag\r\n"
    b"Call-ID: leg-b-1@198.51.100.1\r\n"
    b"CSeq: 2 BYE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def response_to_bye_out(status: int, reason: str) -> bytes:
    return (
        f"SIP/2.0 {status} {reason}\r\n".encode()
        + b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKbye0001;rport=5060\r\n"
        + b"From: <sip:alice@198.51.100.1:5060>;tag=b2b-from\r\n"
        + b"To: <sip:bob@198.51.100.20>;tag=bob-tag\r\n"
        + b"Call-ID: leg-b-1@198.51.100.1\r\n"
        + b"CSeq: 2 BYE\r\n"
        + b"Content-Length: 0\r\n"
        + b"\r\n"
    )


# -- helpers -------------------------------------------------------------------------------


def req(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def sent(layer: TransactionLayer) -> list[tuple[Request | Response, Peer]]:
    """Drain the layer and parse what it would write."""
    return [(parse_message(data), peer) for data, peer in layer.outgoing()]


def run_until(layer: TransactionLayer, end: float) -> list[tuple[float, list]]:
    """Fire timers as an event loop would, up to `end`; returns (time, events+sent) ticks."""
    ticks = []
    while (deadline := layer.next_deadline()) is not None and deadline <= end:
        events = layer.handle_timers(deadline)
        ticks.append((deadline, events + [m for m, _ in sent(layer)]))
    return ticks


def start_server_invite(layer: TransactionLayer, data: bytes = INVITE_IN, peer: Peer = ALICE) -> tuple[str, Request]:
    events = layer.receive(data, peer, 0.0)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    layer.outgoing()  # the 100 Trying
    return events[0].txn_id, events[0].request


# ============================================================ INVITE client (§17.1.1)


def test_invite_client_timer_a_retransmits_at_doubling_intervals():
    layer = TransactionLayer()
    layer.send_request(req(INVITE_OUT), BOB, 0.0)
    assert [(m.method, p) for m, p in sent(layer)] == [("INVITE", BOB)]
    ticks = run_until(layer, 31.9)
    # §17.1.1.2: Timer A starts at T1 and doubles: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5
    assert [t for t, _ in ticks] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all([m.method for m in out] == ["INVITE"] for _, out in ticks)


def test_invite_client_timer_b_times_out_at_64_t1():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    run_until(layer, 31.9)
    events = layer.handle_timers(32.0)
    assert events == [TransactionTimedOut(txn, events[0].request)]
    assert events[0].request.method == "INVITE"
    assert layer.state(txn) is State.TERMINATED
    assert layer.next_deadline() is None


def test_late_timer_call_sends_one_retransmission_not_a_burst():
    layer = TransactionLayer()
    layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.outgoing()
    assert layer.handle_timers(10.0) == []
    assert [m.method for m, _ in sent(layer)] == ["INVITE"]
    assert layer.next_deadline() == 11.0  # re-armed from `now` with the doubled interval


def test_invite_client_over_tcp_never_retransmits():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB_TCP, 0.0)
    layer.outgoing()
    assert layer.next_deadline() == 32.0  # only Timer B (§17.1.1.2: no A over TCP)
    assert layer.handle_timers(31.0) == [] and layer.outgoing() == []
    assert isinstance(layer.handle_timers(32.0)[0], TransactionTimedOut)
    assert layer.state(txn) is State.TERMINATED


def test_invite_client_provisional_stops_retransmission_and_has_no_timeout():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.outgoing()
    events = layer.receive(TRYING_100, BOB, 0.2)
    assert [type(e) for e in events] == [ResponseReceived] and events[0].txn_id == txn
    assert layer.state(txn) is State.PROCEEDING
    assert layer.next_deadline() is None  # Timers A and B belong to Calling
    assert layer.handle_timers(100.0) == [] and layer.outgoing() == []


def test_invite_client_acks_non_2xx_itself():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.outgoing()
    layer.receive(RINGING_180, BOB, 0.1)
    events = layer.receive(BUSY_486, BOB, 1.0)
    assert [(type(e), e.response.status) for e in events] == [(ResponseReceived, 486)]
    [(ack, peer)] = sent(layer)
    # §17.1.1.3: same Request-URI, Call-ID, From, CSeq number; To from the response;
    # one Via equal to the INVITE's top Via (same branch); the INVITE's Route set.
    assert isinstance(ack, Request) and ack.method == "ACK" and peer == BOB
    assert ack.uri == "sip:bob@198.51.100.20:5060"
    assert ack.cseq == (1, "ACK")
    assert ack.branch == "z9hG4bKb2b0001"
    assert len(ack.headers.get_all("Via")) == 1
    assert ack.to_tag == "bob-tag"
    assert ack.from_tag == "b2b-from"
    assert ack.call_id == "leg-b-1@198.51.100.1"
    assert ack.headers.get_all("Route") == ["<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>"]
    assert layer.state(txn) is State.COMPLETED


def test_invite_client_completed_reacks_retransmitted_final_without_event():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.receive(BUSY_486, BOB, 1.0)
    first_ack = layer.outgoing()[-1]
    assert layer.receive(BUSY_486, BOB, 2.0) == []
    assert layer.outgoing() == [first_ack]
    # Timer D: 32 s over UDP, then Terminated.
    assert layer.next_deadline() == 33.0
    assert layer.handle_timers(33.0) == []
    assert layer.state(txn) is State.TERMINATED


def test_invite_client_over_tcp_terminates_at_once_after_ack():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB_TCP, 0.0)
    layer.receive(BUSY_486, BOB_TCP, 1.0)
    assert [m.method for m, _ in sent(layer)] == ["INVITE", "ACK"]
    assert layer.state(txn) is State.TERMINATED  # Timer D is 0 over TCP


def test_invite_client_2xx_moves_to_accepted_and_retransmissions_go_up():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.outgoing()
    first = layer.receive(OK_200, BOB, 1.0)
    assert [(e.txn_id, e.response.status) for e in first] == [(txn, 200)]
    assert layer.state(txn) is State.ACCEPTED
    assert layer.outgoing() == []  # the ACK for a 2xx is the TU's (§13.2.2.4)
    again = layer.receive(OK_200, BOB, 1.5)  # RFC 6026 §8.4: passed up, the TU re-ACKs
    assert [(e.txn_id, e.response.status) for e in again] == [(txn, 200)]
    # Timer M (64*T1) ends Accepted; a later 2xx is a stray, still passed up.
    assert layer.next_deadline() == 33.0
    layer.handle_timers(33.0)
    assert layer.state(txn) is State.TERMINATED
    [stray] = layer.receive(OK_200, BOB, 40.0)
    assert isinstance(stray, ResponseReceived) and stray.txn_id is None


def test_invite_client_absorbs_1xx_after_final():
    layer = TransactionLayer()
    layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.receive(BUSY_486, BOB, 1.0)
    assert layer.receive(RINGING_180, BOB, 1.1) == []


# ---- CANCEL we send (§9.1)


def test_cancel_before_provisional_is_deferred_until_one_arrives():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.outgoing()
    layer.cancel(txn, 0.1)
    assert layer.outgoing() == []  # §9.1: MUST wait for a provisional
    events = layer.receive(RINGING_180, BOB, 0.3)
    assert [e.response.status for e in events] == [180]
    [(cancel, peer)] = sent(layer)
    invite = req(INVITE_OUT)
    assert isinstance(cancel, Request) and cancel.method == "CANCEL" and peer == BOB
    assert cancel.uri == invite.uri
    assert cancel.call_id == invite.call_id
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert cancel.cseq == (1, "CANCEL")
    assert cancel.headers.get_all("Via") == [invite.headers.get_all("Via")[0]]
    assert cancel.headers.get_all("Route") == invite.headers.get_all("Route")


def test_cancel_in_proceeding_goes_out_at_once():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.receive(RINGING_180, BOB, 0.3)
    layer.outgoing()
    layer.cancel(txn, 1.0)
    assert [m.method for m, _ in sent(layer)] == ["CANCEL"]
    layer.cancel(txn, 1.1)  # once only
    assert layer.outgoing() == []


def test_cancel_not_sent_when_final_arrives_first():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.outgoing()
    layer.cancel(txn, 0.1)
    layer.receive(BUSY_486, BOB, 0.2)
    assert [m.method for m, _ in sent(layer)] == ["ACK"]
    layer.receive(RINGING_180, BOB, 0.3)
    assert layer.outgoing() == []


def test_cancel_own_transaction_is_retransmitted_and_its_responses_stay_inside():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.receive(RINGING_180, BOB, 0.0)
    layer.cancel(txn, 0.0)
    layer.outgoing()
    layer.handle_timers(0.5)  # Timer E of the CANCEL's non-INVITE transaction
    assert [m.method for m, _ in sent(layer)] == ["CANCEL"]
    ok = RINGING_180.replace(b"180 Ringing", b"200 OK").replace(b"1 INVITE", b"1 CANCEL")
    assert layer.receive(ok, BOB, 0.6) == []  # the layer owns the CANCEL's answer
    events = layer.receive(response_to_invite_out(487, "Request Terminated"), BOB, 0.7)
    assert [(e.txn_id, e.response.status) for e in events] == [(txn, 487)]


def test_cancelled_invite_without_final_times_out_after_64_t1():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB_TCP, 0.0)
    layer.receive(RINGING_180, BOB_TCP, 1.0)
    layer.cancel(txn, 2.0)
    assert layer.handle_timers(33.9) == []
    events = layer.handle_timers(34.0)  # §9.1: 64*T1 after the CANCEL
    assert [type(e) for e in events] == [TransactionTimedOut] and events[0].txn_id == txn


def test_cancel_of_unknown_or_answered_transaction_is_ignored():
    layer = TransactionLayer()
    layer.cancel("no-such-txn", 0.0)
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    layer.receive(OK_200, BOB, 0.5)
    layer.outgoing()
    layer.cancel(txn, 1.0)
    assert layer.outgoing() == []


# ============================================================ non-INVITE client (§17.1.2)


def test_non_invite_client_timer_e_doubles_capped_at_t2_and_f_times_out():
    layer = TransactionLayer()
    txn = layer.send_request(req(BYE_OUT), BOB, 0.0)
    layer.outgoing()
    ticks = run_until(layer, 31.9)
    assert [t for t, _ in ticks] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all([m.method for m in out] == ["BYE"] for _, out in ticks)
    events = layer.handle_timers(32.0)  # Timer F
    assert [(type(e), e.txn_id) for e in events] == [(TransactionTimedOut, txn)]


def test_non_invite_client_proceeding_retransmits_every_t2():
    layer = TransactionLayer()
    layer.send_request(req(BYE_OUT), BOB, 0.0)
    layer.outgoing()
    layer.handle_timers(0.5)  # first retransmission, next due at 1.5
    layer.receive(response_to_bye_out(100, "Trying"), BOB, 0.6)
    ticks = run_until(layer, 14.0)
    # §17.1.2.2: in Proceeding, Timer E fires every T2.
    assert [t for t, _ in ticks] == [1.5, 5.5, 9.5, 13.5]


def test_non_invite_client_final_goes_up_once_then_timer_k():
    layer = TransactionLayer()
    txn = layer.send_request(req(BYE_OUT), BOB, 0.0)
    events = layer.receive(response_to_bye_out(200, "OK"), BOB, 0.1)
    assert [(e.txn_id, e.response.status) for e in events] == [(txn, 200)]
    assert layer.receive(response_to_bye_out(200, "OK"), BOB, 0.2) == []  # absorbed
    assert layer.state(txn) is State.COMPLETED
    assert layer.next_deadline() == pytest.approx(5.1)  # Timer K = T4
    layer.handle_timers(5.1)
    assert layer.state(txn) is State.TERMINATED


def test_non_invite_client_over_tcp_no_retransmission_and_no_timer_k():
    layer = TransactionLayer()
    txn = layer.send_request(req(BYE_OUT), BOB_TCP, 0.0)
    layer.outgoing()
    assert layer.next_deadline() == 32.0  # Timer F only
    layer.receive(response_to_bye_out(200, "OK"), BOB_TCP, 0.1)
    assert layer.state(txn) is State.TERMINATED


def test_client_matching_uses_branch_and_cseq_method():
    layer = TransactionLayer()
    txn = layer.send_request(req(INVITE_OUT), BOB, 0.0)
    wrong_method = RINGING_180.replace(b"1 INVITE", b"1 BYE")
    [event] = layer.receive(wrong_method, BOB, 0.1)
    assert event.txn_id is None  # §17.1.3: CSeq method must match too
    wrong_branch = RINGING_180.replace(b"z9hG4bKb2b0001", b"z9hG4bKother")
    [event] = layer.receive(wrong_branch, BOB, 0.1)
    assert event.txn_id is None
    assert layer.state(txn) is State.CALLING


def test_ack_and_duplicate_branch_are_refused_as_client_transactions():
    layer = TransactionLayer()
    layer.send_request(req(INVITE_OUT), BOB, 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(req(INVITE_OUT), BOB, 0.0)
    ack = INVITE_OUT.replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
    with pytest.raises(TransactionError):
        layer.send_request(req(ack), BOB, 0.0)


def test_send_request_adds_a_branch_when_the_via_has_none():
    layer = TransactionLayer()
    layer.send_request(req(BYE_OUT.replace(b";branch=z9hG4bKbye0001", b"")), BOB, 0.0)
    [(bye, _)] = sent(layer)
    assert bye.branch.startswith("z9hG4bK") and len(bye.branch) > 7


# ============================================================ INVITE server (§17.2.1)


def test_invite_server_passes_invite_up_and_sends_100_at_once():
    layer = TransactionLayer()
    events = layer.receive(INVITE_IN, ALICE, 0.0)
    assert [type(e) for e in events] == [RequestReceived]
    assert events[0].peer == ALICE and events[0].request.method == "INVITE"
    [(trying, peer)] = sent(layer)
    assert isinstance(trying, Response) and trying.status == 100 and peer == ALICE
    assert trying.to_tag in (None, "")  # a 100 from a transaction carries no tag
    assert layer.state(events[0].txn_id) is State.PROCEEDING


def test_invite_server_retransmission_resends_last_provisional():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 180, "Ringing", to_tag="b2b-1"), 0.5)
    layer.outgoing()
    assert layer.receive(INVITE_IN, ALICE, 1.0) == []  # no second RequestReceived
    [(resent, peer)] = sent(layer)
    assert resent.status == 180 and resent.to_tag == "b2b-1" and peer == ALICE


def test_invite_server_retransmission_before_tu_answers_resends_100():
    layer = TransactionLayer()
    start_server_invite(layer)
    assert layer.receive(INVITE_IN, ALICE, 0.5) == []
    assert [m.status for m, _ in sent(layer)] == [100]


def test_invite_server_non_2xx_retransmitted_by_timer_g_until_timer_h():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 486, "Busy Here", to_tag="b2b-1"), 0.0)
    assert [m.status for m, _ in sent(layer)] == [486]
    ticks = run_until(layer, 31.9)
    # §17.2.1: Timer G starts at T1, doubles, capped at T2.
    assert [t for t, _ in ticks] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all([m.status for m in out] == [486] for _, out in ticks)
    events = layer.handle_timers(32.0)  # Timer H: the ACK never came
    assert [(type(e), e.txn_id) for e in events] == [(TransactionTimedOut, txn)]
    assert layer.state(txn) is State.TERMINATED


def test_invite_server_ack_confirms_then_timer_i():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 486, "Busy Here", to_tag="b2b-1"), 0.0)
    layer.outgoing()
    assert layer.receive(ACK_NON_2XX_IN, ALICE, 0.2) == []  # the transaction's, not the TU's
    assert layer.state(txn) is State.CONFIRMED
    assert layer.receive(ACK_NON_2XX_IN, ALICE, 0.3) == []  # absorbed in Confirmed
    assert layer.receive(INVITE_IN, ALICE, 0.4) == []
    assert layer.outgoing() == []  # Timer G stopped
    assert layer.next_deadline() == pytest.approx(5.2)  # Timer I = T4
    layer.handle_timers(5.2)
    assert layer.state(txn) is State.TERMINATED


def test_invite_server_completed_resends_final_on_retransmitted_invite():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 404, "Not Found", to_tag="b2b-1"), 0.0)
    layer.outgoing()
    assert layer.receive(INVITE_IN, ALICE, 0.2) == []
    assert [m.status for m, _ in sent(layer)] == [404]


def test_invite_server_over_tcp_no_timer_g_and_ack_terminates():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer, INVITE_IN, ALICE_TCP)
    layer.send_response(txn, make_response(invite, 486, "Busy Here", to_tag="b2b-1"), 0.0)
    assert [(m.status, p) for m, p in sent(layer)] == [(486, ALICE_TCP)]
    assert layer.next_deadline() == 32.0  # Timer H only
    layer.receive(ACK_NON_2XX_IN, ALICE_TCP, 0.1)
    assert layer.state(txn) is State.TERMINATED  # Timer I is 0 over TCP


def test_invite_server_2xx_retransmitted_until_ack():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 200, "OK", to_tag="b2b-1"), 0.0)
    assert layer.state(txn) is State.ACCEPTED
    assert [m.status for m, _ in sent(layer)] == [200]
    ticks = run_until(layer, 4.0)
    # §13.3.1.4: T1, doubling, capped at T2.
    assert [t for t, _ in ticks] == [0.5, 1.5, 3.5]
    assert all([m.status for m in out] == [200] for _, out in ticks)
    events = layer.receive(ACK_2XX_IN, ALICE, 4.0)
    assert [type(e) for e in events] == [AckReceived]
    assert events[0].request.method == "ACK" and events[0].peer == ALICE
    assert run_until(layer, 31.9) == []  # no more 2xx retransmissions
    assert layer.handle_timers(32.0) == []  # Timer L: no AckTimedOut once ACKed
    assert layer.state(txn) is State.TERMINATED


def test_invite_server_2xx_never_acked_gives_ack_timed_out():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 200, "OK", to_tag="b2b-1"), 1.0)
    ticks = run_until(layer, 32.9)
    assert [t for t, _ in ticks] == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    events = layer.handle_timers(33.0)
    assert events == [AckTimedOut(txn, invite)]


def test_invite_server_2xx_retransmitted_over_tcp_too():
    # §13.3.1.4: the 2xx is end-to-end, a later hop may be UDP, so even a reliable
    # transport retransmits it.
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer, INVITE_IN, ALICE_TCP)
    layer.send_response(txn, make_response(invite, 200, "OK", to_tag="b2b-1"), 0.0)
    layer.outgoing()
    layer.handle_timers(0.5)
    assert [(m.status, p) for m, p in sent(layer)] == [(200, ALICE_TCP)]


def test_invite_server_accepted_absorbs_invite_retransmission():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 200, "OK", to_tag="b2b-1"), 0.0)
    layer.outgoing()
    assert layer.receive(INVITE_IN, ALICE, 0.1) == []  # RFC 6026 §8.7
    assert layer.outgoing() == []


def test_tu_cannot_send_a_second_final_response():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 486, "Busy Here", to_tag="b2b-1"), 0.0)
    with pytest.raises(TransactionError):
        layer.send_response(txn, make_response(invite, 200, "OK", to_tag="b2b-1"), 0.1)
    with pytest.raises(TransactionError):
        layer.send_response("no-such-txn", make_response(invite, 200, "OK"), 0.1)


# ---- CANCEL received (§9.2)


def test_cancel_in_proceeding_is_answered_200_and_reported():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 180, "Ringing", to_tag="b2b-1"), 0.1)
    layer.outgoing()
    events = layer.receive(CANCEL_IN, ALICE, 1.0)
    assert [type(e) for e in events] == [CancelReceived]
    assert events[0].txn_id == txn and events[0].request.method == "CANCEL"
    [(ok, peer)] = sent(layer)
    assert ok.status == 200 and ok.cseq == (314159, "CANCEL") and peer == ALICE
    assert ok.to_tag == "b2b-1"  # §9.2: the To tag of the INVITE's response
    # The TU answers the INVITE 487; it is a normal non-2xx final.
    layer.send_response(txn, make_response(invite, 487, "Request Terminated", to_tag="b2b-1"), 1.1)
    assert [m.status for m, _ in sent(layer)] == [487]
    assert layer.state(txn) is State.COMPLETED


def test_retransmitted_cancel_gets_the_same_answer_and_no_second_event():
    layer = TransactionLayer()
    start_server_invite(layer)
    layer.receive(CANCEL_IN, ALICE, 1.0)
    layer.outgoing()
    assert layer.receive(CANCEL_IN, ALICE, 1.5) == []
    assert [(m.status, m.cseq[1]) for m, _ in sent(layer)] == [(200, "CANCEL")]


def test_cancel_on_completed_invite_gets_481():
    layer = TransactionLayer()
    txn, invite = start_server_invite(layer)
    layer.send_response(txn, make_response(invite, 486, "Busy Here", to_tag="b2b-1"), 0.0)
    layer.outgoing()
    assert layer.receive(CANCEL_IN, ALICE, 0.2) == []
    assert [(m.status, m.cseq[1]) for m, _ in sent(layer)] == [(481, "CANCEL")]


def test_cancel_without_invite_gets_481():
    layer = TransactionLayer()
    assert layer.receive(CANCEL_IN, ALICE, 0.0) == []
    assert [(m.status, m.cseq[1]) for m, _ in sent(layer)] == [(481, "CANCEL")]


# ---- responses go where §18.2.2 and RFC 3581 say; Via gets received/rport


def test_response_goes_to_via_sent_by_port_without_rport():
    layer = TransactionLayer()
    events = layer.receive(INVITE_IN, ALICE_NAT, 0.0)
    via = events[0].request.via[0]
    assert via.received == "203.0.113.7"  # §18.2.1: sent-by host is not the source
    [(_, peer)] = layer.outgoing()
    assert peer == Peer("udp", "203.0.113.7", 5060)  # received address, sent-by port


def test_response_goes_to_source_port_with_rport():
    layer = TransactionLayer()
    events = layer.receive(INVITE_IN_RPORT, ALICE_NAT, 0.0)
    via = events[0].request.via[0]
    assert via.received == "203.0.113.7"
    assert str(via.rport) == "40123"  # RFC 3581 §4
    [(data, peer)] = layer.outgoing()
    assert peer == ALICE_NAT
    trying = parse_message(data)
    assert "rport=40123" in trying.headers.get_all("Via")[0]  # make_response copied it


def test_no_received_param_when_sent_by_is_the_source():
    layer = TransactionLayer()
    events = layer.receive(INVITE_IN, ALICE, 0.0)
    assert events[0].request.headers.get_all("Via")[0] == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds"


def test_tcp_response_goes_back_on_the_same_connection():
    layer = TransactionLayer()
    layer.receive(INVITE_IN, Peer("tcp", "203.0.113.7", 50999), 0.0)
    [(_, peer)] = layer.outgoing()
    assert peer == Peer("tcp", "203.0.113.7", 50999)


# ---- ACKs for 2xx, strays, RFC 2543


def test_unmatched_ack_is_ack_received():
    layer = TransactionLayer()
    events = layer.receive(ACK_2XX_IN, ALICE, 0.0)
    assert [type(e) for e in events] == [AckReceived] and events[0].peer == ALICE


def test_unmatched_response_is_passed_up_without_transaction():
    layer = TransactionLayer()
    [event] = layer.receive(OK_200, BOB, 0.0)
    assert event == ResponseReceived(None, event.response) and event.response.status == 200


def test_rfc2543_request_matching_without_magic_cookie():
    layer = TransactionLayer()
    [event] = layer.receive(INVITE_2543, CAROL, 0.0)
    txn = event.txn_id
    layer.outgoing()
    assert layer.receive(INVITE_2543, CAROL, 0.5) == []  # the retransmission matches
    layer.send_response(txn, make_response(event.request, 486, "Busy Here", to_tag="b2b-9"), 1.0)
    layer.outgoing()
    assert layer.receive(ACK_2543, CAROL, 1.1) == []  # matches via To tag of our 486
    assert layer.state(txn) is State.CONFIRMED


def test_rfc2543_ack_with_other_to_tag_does_not_match():
    layer = TransactionLayer()
    [event] = layer.receive(INVITE_2543, CAROL, 0.0)
    layer.send_response(event.txn_id, make_response(event.request, 486, "Busy Here", to_tag="b2b-9"), 1.0)
    other = layer.receive(ACK_2543.replace(b"tag=b2b-9", b"tag=elsewhere"), CAROL, 1.1)
    assert [type(e) for e in other] == [AckReceived]
    assert layer.state(event.txn_id) is State.COMPLETED


def test_rfc2543_ack_for_2xx_reusing_the_branch_stops_retransmission():
    layer = TransactionLayer()
    [event] = layer.receive(INVITE_2543, CAROL, 0.0)
    layer.send_response(event.txn_id, make_response(event.request, 200, "OK", to_tag="b2b-9"), 1.0)
    layer.outgoing()
    events = layer.receive(ACK_2543, CAROL, 1.1)
    assert [type(e) for e in events] == [AckReceived]
    assert run_until(layer, 32.9) == []  # no 2xx retransmission
    assert layer.handle_timers(33.0) == []  # Timer L, and no AckTimedOut
    assert layer.state(event.txn_id) is State.TERMINATED


def test_events_are_frozen():
    event = AckReceived(req(ACK_2XX_IN), ALICE)
    with pytest.raises(AttributeError):
        event.peer = BOB  # type: ignore[misc]


def test_same_branch_from_another_sent_by_is_another_transaction():
    layer = TransactionLayer()
    layer.receive(INVITE_IN, ALICE, 0.0)
    other = INVITE_IN.replace(b"192.0.2.10:5060;branch", b"192.0.2.11:5060;branch")
    events = layer.receive(other, Peer("udp", "192.0.2.11", 5060), 0.1)
    assert [type(e) for e in events] == [RequestReceived]  # §17.2.3: sent-by is part of the key


# ============================================================ non-INVITE server (§17.2.2)


def test_non_invite_server_trying_absorbs_retransmission():
    layer = TransactionLayer()
    [event] = layer.receive(OPTIONS_IN, ALICE, 0.0)
    assert layer.outgoing() == []  # no 100 for non-INVITE
    assert layer.receive(OPTIONS_IN, ALICE, 0.5) == []
    assert layer.outgoing() == []
    assert layer.state(event.txn_id) is State.TRYING


def test_non_invite_server_resends_final_then_timer_j():
    layer = TransactionLayer()
    [event] = layer.receive(OPTIONS_IN, ALICE, 0.0)
    layer.send_response(event.txn_id, make_response(event.request, 200, "OK", to_tag="x"), 0.1)
    assert [m.status for m, _ in sent(layer)] == [200]
    assert layer.receive(OPTIONS_IN, ALICE, 1.0) == []
    assert [m.status for m, _ in sent(layer)] == [200]
    assert layer.next_deadline() == pytest.approx(32.1)  # Timer J = 64*T1
    layer.handle_timers(32.1)
    assert layer.state(event.txn_id) is State.TERMINATED


def test_completed_non_invite_server_holds_the_response_bytes_not_the_messages():
    """For its 64*T1 in Completed a transaction answers retransmissions byte for byte
    from what it sent, without the parsed request or response (issue 17: a registration
    storm held ~3 KB a REGISTER for 32 s)."""
    layer = TransactionLayer()
    [event] = layer.receive(OPTIONS_IN, ALICE, 0.0)
    layer.send_response(event.txn_id, make_response(event.request, 200, "OK", to_tag="x"), 0.1)
    [(first, _)] = layer.outgoing()
    txn = layer._txns[event.txn_id]  # noqa: SLF001 - what the layer holds is the point
    assert txn.request is None and txn.sent == first
    layer.receive(OPTIONS_IN, ALICE, 1.0)
    assert layer.outgoing() == [(first, ALICE)]


def test_non_invite_server_proceeding_resends_provisional():
    layer = TransactionLayer()
    [event] = layer.receive(OPTIONS_IN, ALICE, 0.0)
    layer.send_response(event.txn_id, make_response(event.request, 100, "Trying"), 0.1)
    layer.outgoing()
    layer.receive(OPTIONS_IN, ALICE, 0.5)
    assert [m.status for m, _ in sent(layer)] == [100]
    assert layer.state(event.txn_id) is State.PROCEEDING


def test_non_invite_server_over_tcp_timer_j_is_zero():
    layer = TransactionLayer()
    [event] = layer.receive(OPTIONS_IN, ALICE_TCP, 0.0)
    layer.send_response(event.txn_id, make_response(event.request, 200, "OK", to_tag="x"), 0.1)
    assert layer.state(event.txn_id) is State.TERMINATED
    assert layer.next_deadline() is None


def test_layer_parses_bytes_and_accepts_parsed_messages_alike():
    layer = TransactionLayer()
    [event] = layer.receive(req(OPTIONS_IN), ALICE, 0.0)
    assert isinstance(event, RequestReceived)


# ============================================================ property


def _invite_variant(i: int) -> bytes:
    return (
        INVITE_IN.replace(b"z9hG4bK776asdhds", f"z9hG4bKprop{i}".encode())
        .replace(b"a84b4c76e66710", f"prop-call-{i}".encode())
    )


def _options_variant(i: int) -> bytes:
    return OPTIONS_IN.replace(b"z9hG4bKopt1", f"z9hG4bKpropopt{i}".encode())


def _cancel_variant(i: int) -> bytes:
    return (
        CANCEL_IN.replace(b"z9hG4bK776asdhds", f"z9hG4bKprop{i}".encode())
        .replace(b"a84b4c76e66710", f"prop-call-{i}".encode())
    )


_STEP = st.one_of(
    st.tuples(st.just("invite"), st.integers(0, 2)),
    st.tuples(st.just("options"), st.integers(0, 2)),
    st.tuples(st.just("cancel"), st.integers(0, 2)),
    st.tuples(st.just("answer"), st.sampled_from([100, 180, 200, 486])),
    st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_STEP, max_size=40))
def test_retransmissions_never_give_two_request_received_for_one_transaction(steps):
    """Any interleaving of retransmitted INVITE/OPTIONS/CANCEL, TU answers and time (kept
    under 64*T1, while every UDP transaction is alive) yields one RequestReceived per
    request. (Over TCP there are no retransmissions: Timer J is 0.)"""
    layer = TransactionLayer()
    peer = ALICE
    now = 0.0
    received: list[RequestReceived] = []
    live: list[RequestReceived] = []
    for kind, arg in steps:
        if kind == "tick":
            now = min(now + arg, 30.0)
            events = layer.handle_timers(now)
        elif kind == "answer":
            events = []
            if live:
                ev = live[-1]
                try:
                    layer.send_response(ev.txn_id, make_response(ev.request, arg, None, to_tag="t"), now)
                except TransactionError:
                    pass  # a second final: the layer refuses, as it should
        else:
            data = {"invite": _invite_variant, "options": _options_variant, "cancel": _cancel_variant}[kind](arg)
            events = layer.receive(data, peer, now)
        layer.outgoing()
        for e in events:
            if isinstance(e, RequestReceived):
                received.append(e)
                live.append(e)
    keys = [(e.request.method, e.request.branch) for e in received]
    assert len(keys) == len(set(keys))
    assert len({e.txn_id for e in received}) == len(received)
