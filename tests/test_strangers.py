"""Issue 16 finding 3: no reflection. Strangers (not a trunk, not a registered phone) are
answered at most once per request, never retransmitted, rationed per source, or not at all
as configured; and their requests hold no transaction (bounded memory).

Before: one 168-byte INVITE drew 100 Trying and eleven 403s over 32 s (16x the bytes), and
every OPTIONS/REGISTER from a stranger held a transaction for 32 s.
"""

from __future__ import annotations

import pytest

from b2bua.peer import Peer
from b2bua.strangers import StrangerPolicy
from tests.test_b2bua import ALICE_DESK, TRUNK, Harness

STRANGER = Peer("udp", "192.0.2.99", 5060)

#: What friendly-scanner sends: 168 bytes.
SCANNER_INVITE = (
    "INVITE sip:100@192.0.2.1 SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bK{n}\n"
    "From: <sip:100@1.1.1.1>;tag={n}\nTo: <sip:100@1.1.1.1>\n"
    "Call-ID: {n}\nCSeq: 1 INVITE\nMax-Forwards: 70\nContent-Length: 0\n\n"
)


def options(n: int, host: str = "192.0.2.99") -> str:
    return (
        f"OPTIONS sip:100@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP {host}:5060;branch=z9hG4bKo{n}\n"
        f"From: <sip:100@1.1.1.1>;tag=o{n}\nTo: <sip:100@1.1.1.1>\nCall-ID: o{n}\nCSeq: 1 OPTIONS\n"
        f"Max-Forwards: 70\nContent-Length: 0\n\n"
    )


def register(n: int, user: str = "alice") -> str:
    return (
        f"REGISTER sip:pbx.test SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKr{n}\n"
        f"From: <sip:{user}@pbx.test>;tag=r{n}\nTo: <sip:{user}@pbx.test>\nCall-ID: r{n}\nCSeq: 1 REGISTER\n"
        f"Contact: <sip:{user}@192.0.2.99>\nMax-Forwards: 70\nContent-Length: 0\n\n"
    )


@pytest.fixture
def h(tmp_path):
    return Harness(tmp_path)


def test_a_stranger_invite_gets_one_403_no_100_trying_and_no_retransmission(h) -> None:
    h.send(SCANNER_INVITE.format(n="a1"), STRANGER)
    h.advance(40)  # Timer G would have retransmitted the 403 ten times by now
    sent = h.take(STRANGER)
    assert [m.status for m in sent] == [403]  # type: ignore[union-attr]
    assert len(h.txn) == 0


def test_a_retransmitted_stranger_request_is_answered_once(h) -> None:
    for _ in range(7):  # Timer A retransmissions of one INVITE
        h.send(SCANNER_INVITE.format(n="a2"), STRANGER)
        h.advance(0.5)
    assert len(h.take(STRANGER, 403)) == 1


def test_answers_to_one_stranger_are_rate_limited(h) -> None:
    for n in range(500):  # svmap at 5,000/s for 0.1 s
        h.send(options(n), STRANGER)
        h.advance(0.0002)
    answered = len(h.take(STRANGER, 200))
    assert answered <= 60, answered  # burst 50 + 10/s
    h.advance(1)
    h.send(options(1000), STRANGER)
    assert len(h.take(STRANGER, 200)) == 1  # the bucket refills
    # Another source has its own bucket.
    h.send(options(1001, host="192.0.2.98"), Peer("udp", "192.0.2.98", 5060))
    assert len(h.take(None, 200)) == 1


def test_strangers_can_be_left_unanswered(h) -> None:
    h.txn.strangers = StrangerPolicy(lambda _p, _n: False, answer=False)
    h.send(SCANNER_INVITE.format(n="a3"), STRANGER)
    h.send(options(1), STRANGER)
    h.send(register(1), STRANGER)
    h.advance(40)
    assert h.take() == []
    assert len(h.txn) == 0


def test_stranger_floods_hold_no_transactions(h) -> None:
    for n in range(2000):
        h.send(options(n) if n % 2 else register(n), STRANGER)
        h.advance(0.001)
    assert len(h.txn) == 0  # was 2,000 held for 32 s
    assert h.txn.strangers is not None and h.txn.strangers.held() <= 4096 + 1


def test_a_new_phone_still_registers_and_a_registered_one_gets_rfc_treatment(h) -> None:
    h.register("alice", "alice-pw", ALICE_DESK, "sip:alice@203.0.113.10:5062;transport=udp;ob")  # 401 then 200
    h.take()
    invite = SCANNER_INVITE.format(n="a4").replace("192.0.2.99:5060", f"{ALICE_DESK.host}:{ALICE_DESK.port}")
    h.send(invite, ALICE_DESK)
    assert [m.status for m in h.take(ALICE_DESK)] == [100, 407]  # type: ignore[union-attr]
    # A trunk is no stranger either: its INVITE gets 100 Trying at once.
    h.send(SCANNER_INVITE.format(n="a5").replace("192.0.2.99", "198.51.100.7"), TRUNK)
    assert 100 in [m.status for m in h.take(TRUNK)]  # type: ignore[union-attr]


def test_finished_transactions_held_are_bounded_even_from_a_trusted_address(h) -> None:
    """A flood from a registered phone's address (a guesser behind an office NAT) is answered
    as a peer's, but what the layer holds for retransmissions stays bounded."""
    h.txn.max_held = 100
    h.register("alice", "alice-pw", ALICE_DESK, "sip:alice@203.0.113.10:5062;transport=udp;ob")
    h.take()
    for n in range(1000):
        h.send(options(n, host=ALICE_DESK.host).replace(":5060;", f":{ALICE_DESK.port};"), ALICE_DESK)
    assert len(h.take(ALICE_DESK, 200)) == 1000  # every one answered
    assert len(h.txn) <= 101
