"""The registrar driven with real REGISTER bytes: challenge, authorise, bind (RFC 3261 §10.3)."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from b2bua.auth import DigestAuthenticator, compute_response, parse_auth_header
from b2bua.lockout import Lockout
from b2bua.message import Request, Response, parse_message
from b2bua.peer import Peer
from b2bua.registrar import Registrar

REALM = "pbx.example"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
T0 = 1_700_000_000.0
ALICE_PHONE = Peer("udp", "192.0.2.10", 5062)


def register(
    *,
    user: str = "alice",
    contacts: list[str] | None = None,
    expires: int | None = None,
    call_id: str = "reg-1@192.0.2.10",
    cseq: int = 1,
    authorization: str | None = None,
    to_user: str | None = None,
) -> bytes:
    """A REGISTER as a phone writes it."""
    if contacts is None:
        contacts = [f"<sip:{user}@192.0.2.10:5062;transport=udp>"]
    lines = [
        "REGISTER sip:pbx.example SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-{call_id}-{cseq};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@pbx.example>;tag=ft{user}",
        f"To: <sip:{to_user or user}@pbx.example>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += ["User-Agent: test-phone/1.0", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def req(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def digest_for(
    response: Response,
    user: str = "alice",
    password: str | None = None,
    *,
    nc: int = 1,
    index: int = 0,
    header: str = "WWW-Authenticate",
) -> str:
    """The Authorization value a phone computes from our 401."""
    challenge = response.headers.get_all(header)[index]
    parsed = parse_auth_header(challenge)
    assert parsed is not None
    p = parsed[1]
    password = USERS.get(user, "x") if password is None else password
    ncs = f"{nc:08x}"
    resp = compute_response(
        p["algorithm"], user, p["realm"], password, "REGISTER", "sip:pbx.example", p["nonce"],
        qop="auth", nc=ncs, cnonce="c0ffee",
    )
    return (
        f'Digest username="{user}",realm="{p["realm"]}",nonce="{p["nonce"]}",uri="sip:pbx.example",'
        f'response="{resp}",algorithm={p["algorithm"]},cnonce="c0ffee",nc={ncs},qop=auth,opaque="{p["opaque"]}"'
    )


def make_registrar(db_path: Path | None = None, **lockout_kw: object) -> tuple[Registrar, list[str]]:
    lines: list[str] = []
    lockout = Lockout(log=lines.append, **lockout_kw)  # type: ignore[arg-type]
    return Registrar(USERS, REALM, db_path, DigestAuthenticator(REALM, "test-secret"), lockout), lines


def authorised(reg: Registrar, now: float = T0, peer: Peer = ALICE_PHONE, **kw: object) -> Response:
    """Challenge, then answer it: what a phone does for every REGISTER."""
    first = reg.handle(req(register(**kw)), peer, now)  # type: ignore[arg-type]
    assert first.status == 401
    user = str(kw.get("user", "alice"))
    cseq = int(kw.get("cseq", 1)) + 1  # type: ignore[call-overload]
    kw = {**kw, "cseq": cseq, "authorization": digest_for(first, user)}
    return reg.handle(req(register(**kw)), peer, now)  # type: ignore[arg-type]


def contact_expires(response: Response) -> dict[str, int]:
    out = {}
    for c in response.headers.get_all("Contact"):
        m = re.fullmatch(r"<(.*)>;expires=(\d+)", c)
        assert m, c
        out[m.group(1)] = int(m.group(2))
    return out


# -- the basic flow ---------------------------------------------------------------------


def test_register_flow_challenge_then_200_with_contacts_and_date() -> None:
    reg, _ = make_registrar()
    first = reg.handle(req(register()), ALICE_PHONE, T0)
    assert first.status == 401
    challenges = first.headers.get_all("WWW-Authenticate")
    assert len(challenges) == 2
    assert "algorithm=SHA-256" in challenges[0] and "algorithm=MD5" in challenges[1]
    assert reg.contacts("alice", T0) == []

    second = reg.handle(req(register(cseq=2, authorization=digest_for(first))), ALICE_PHONE, T0 + 1)
    assert second.status == 200, second.reason
    assert contact_expires(second) == {"sip:alice@192.0.2.10:5062;transport=udp": 3600}
    assert parsedate_to_datetime(second.headers.get("Date")).timestamp() == int(T0 + 1)
    assert second.call_id == "reg-1@192.0.2.10"
    assert second.cseq == (2, "REGISTER")

    [b] = reg.contacts("alice", T0 + 2)
    assert b.uri == "sip:alice@192.0.2.10:5062;transport=udp"
    assert b.peer == ALICE_PHONE
    assert b.expires_at == T0 + 1 + 3600
    assert (b.call_id, b.cseq) == ("reg-1@192.0.2.10", 2)
    assert reg.user_at("192.0.2.10") == "alice"
    assert reg.user_at("192.0.2.99") is None


def test_md5_challenge_also_accepted() -> None:
    reg, _ = make_registrar()
    first = reg.handle(req(register()), ALICE_PHONE, T0)
    r = reg.handle(req(register(cseq=2, authorization=digest_for(first, index=1))), ALICE_PHONE, T0)
    assert r.status == 200


def test_contact_uri_is_kept_exactly_as_sent() -> None:
    reg, _ = make_registrar()
    odd = '"Alice <desk>" <sip:alice@PHONE.example:5062;transport=TCP;ob;x=%41>;+sip.instance="<urn:uuid:1>"'
    r = authorised(reg, contacts=[odd])
    assert r.status == 200
    assert [b.uri for b in reg.contacts("alice", T0)] == ["sip:alice@PHONE.example:5062;transport=TCP;ob;x=%41"]


def test_wrong_password_gets_401_again() -> None:
    reg, _ = make_registrar()
    first = reg.handle(req(register()), ALICE_PHONE, T0)
    r = reg.handle(req(register(cseq=2, authorization=digest_for(first, password="wrong"))), ALICE_PHONE, T0)
    assert r.status == 401
    assert "stale" not in r.headers.get("WWW-Authenticate")
    assert reg.contacts("alice", T0) == []


def test_unknown_user_is_not_revealed() -> None:
    """Same 401 for a user that does not exist as for a wrong password (no enumeration)."""
    reg, _ = make_registrar()
    first = reg.handle(req(register(user="mallory")), ALICE_PHONE, T0)
    assert first.status == 401
    r = reg.handle(req(register(user="mallory", cseq=2, authorization=digest_for(first, "mallory"))), ALICE_PHONE, T0)
    assert r.status == 401


def test_authenticated_user_must_match_to_user() -> None:
    reg, _ = make_registrar()
    first = reg.handle(req(register(to_user="bob")), ALICE_PHONE, T0)
    r = reg.handle(req(register(to_user="bob", cseq=2, authorization=digest_for(first, "alice"))), ALICE_PHONE, T0)
    assert r.status == 403
    assert reg.contacts("bob", T0) == []


def test_stale_nonce_gets_stale_challenge_then_succeeds() -> None:
    reg, _ = make_registrar()
    first = reg.handle(req(register()), ALICE_PHONE, T0)
    late = T0 + 301
    r = reg.handle(req(register(cseq=2, authorization=digest_for(first))), ALICE_PHONE, late)
    assert r.status == 401
    assert all("stale=true" in v for v in r.headers.get_all("WWW-Authenticate"))
    ok = reg.handle(req(register(cseq=3, authorization=digest_for(r))), ALICE_PHONE, late)
    assert ok.status == 200


def test_replayed_authorization_is_rejected() -> None:
    reg, _ = make_registrar()
    first = reg.handle(req(register()), ALICE_PHONE, T0)
    creds = digest_for(first)
    assert reg.handle(req(register(cseq=2, authorization=creds)), ALICE_PHONE, T0).status == 200
    # An eavesdropper resends the same credentials (new CSeq so the registrar's own
    # ordering check would not catch it): the nonce count has not increased.
    replay = reg.handle(req(register(cseq=3, authorization=creds, contacts=["<sip:alice@203.0.113.66>"])), ALICE_PHONE, T0 + 1)
    assert replay.status == 401
    assert [b.uri for b in reg.contacts("alice", T0 + 1)] == ["sip:alice@192.0.2.10:5062;transport=udp"]
    # The real phone reuses the nonce with the next nc.
    nxt = reg.handle(req(register(cseq=4, authorization=digest_for(first, nc=2))), ALICE_PHONE, T0 + 2)
    assert nxt.status == 200


# -- lockout ----------------------------------------------------------------------------


def test_lockout_after_repeated_failures_and_its_expiry() -> None:
    reg, lines = make_registrar(max_failures=5, window=60, duration=600)
    attacker = Peer("udp", "198.51.100.9", 5060)
    for i in range(5):
        first = reg.handle(req(register(cseq=2 * i + 1)), attacker, T0 + i)
        assert first.status == 401
        r = reg.handle(req(register(cseq=2 * i + 2, authorization=digest_for(first, password=f"guess{i}"))), attacker, T0 + i)
        assert r.status == (403 if i == 4 else 401)
    assert len(lines) == 1
    assert lines[0].startswith("security: lockout ip=198.51.100.9 user=alice failures=5 window=60s strike=1 until=")

    # Locked: 403 at once, no challenge evaluated, even with the right password.
    first = reg.handle(req(register(cseq=20)), attacker, T0 + 10)
    assert first.status == 403 and first.headers.get("WWW-Authenticate") is None
    # The guesser is locked, not the user: alice from her own address is challenged (issue 16).
    assert reg.handle(req(register(cseq=21)), ALICE_PHONE, T0 + 10).status == 401
    # Bob from another IP is unaffected.
    assert reg.handle(req(register(user="bob")), Peer("udp", "192.0.2.20", 5060), T0 + 10).status == 401

    # After the lockout, the right password works again.
    later = T0 + 4 + 600
    assert authorised(reg, now=later, peer=attacker, cseq=30).status == 200
    assert len(lines) == 1


# -- bindings ---------------------------------------------------------------------------


def test_multiple_contacts_in_one_and_several_registers() -> None:
    reg, _ = make_registrar()
    r = authorised(reg, contacts=["<sip:alice@192.0.2.10:5062>", "<sip:alice@192.0.2.11:5060>;expires=600"])
    assert contact_expires(r) == {"sip:alice@192.0.2.10:5062": 3600, "sip:alice@192.0.2.11:5060": 600}
    desk = Peer("tcp", "192.0.2.12", 40000)
    r = authorised(reg, peer=desk, call_id="desk-1", contacts=["<sip:alice@192.0.2.12:5060;transport=tcp>"], now=T0 + 10)
    assert r.status == 200
    assert len(contact_expires(r)) == 3
    assert {b.peer for b in reg.contacts("alice", T0 + 10)} == {ALICE_PHONE, desk}


def test_expires_header_and_param_precedence_and_cap() -> None:
    reg, _ = make_registrar()
    r = authorised(reg, expires=120, contacts=["<sip:alice@h1>", "<sip:alice@h2>;expires=300", "<sip:alice@h3>;expires=99999"])
    assert contact_expires(r) == {"sip:alice@h1": 120, "sip:alice@h2": 300, "sip:alice@h3": 7200}


def test_refresh_replaces_the_same_contact() -> None:
    reg, _ = make_registrar()
    authorised(reg, expires=600)
    r = authorised(reg, expires=1800, cseq=3, now=T0 + 100)
    assert contact_expires(r) == {"sip:alice@192.0.2.10:5062;transport=udp": 1800}
    [b] = reg.contacts("alice", T0 + 100)
    assert b.expires_at == T0 + 100 + 1800 and b.cseq == 4


def test_refresh_matches_equivalent_uri_and_moves_peer() -> None:
    reg, _ = make_registrar()
    authorised(reg, contacts=["<sip:alice@Phone.Example:5062>"])
    moved = Peer("udp", "192.0.2.10", 6000)  # NAT rebinding: same phone, new source port
    r = authorised(reg, peer=moved, contacts=["<sip:alice@phone.example:5062;ob>"], cseq=3)
    assert list(contact_expires(r)) == ["sip:alice@phone.example:5062;ob"]
    assert reg.contacts("alice", T0)[0].peer == moved


def test_unregister_one_contact_with_expires_zero() -> None:
    reg, _ = make_registrar()
    authorised(reg, contacts=["<sip:alice@h1>", "<sip:alice@h2>"])
    r = authorised(reg, contacts=["<sip:alice@h1>"], expires=0, cseq=3)
    assert r.status == 200
    assert contact_expires(r) == {"sip:alice@h2": 3600}
    r = authorised(reg, contacts=["<sip:alice@h2>;expires=0"], cseq=5)
    assert r.status == 200 and r.headers.get_all("Contact") == []
    assert reg.contacts("alice", T0) == []


def test_unregister_all_with_star() -> None:
    reg, _ = make_registrar()
    authorised(reg, contacts=["<sip:alice@h1>", "<sip:alice@h2>"])
    authorised(reg, contacts=["<sip:alice@h3>"], call_id="other-phone")
    r = authorised(reg, contacts=["*"], expires=0, cseq=3)
    assert r.status == 200 and r.headers.get_all("Contact") == []
    assert reg.contacts("alice", T0) == []
    assert reg.user_at("192.0.2.10") is None


@pytest.mark.parametrize(
    "contacts, expires",
    [(["*"], None), (["*"], 3600), (["*", "<sip:alice@h1>"], 0)],
)
def test_star_needs_expires_zero_and_to_be_alone(contacts: list[str], expires: int | None) -> None:
    reg, _ = make_registrar()
    authorised(reg)
    r = authorised(reg, contacts=contacts, expires=expires, cseq=3)
    assert r.status == 400
    assert len(reg.contacts("alice", T0)) == 1


def test_query_without_contact_lists_bindings_and_changes_nothing() -> None:
    reg, _ = make_registrar()
    authorised(reg)
    r = authorised(reg, contacts=[], cseq=3, now=T0 + 60)
    assert r.status == 200
    assert contact_expires(r) == {"sip:alice@192.0.2.10:5062;transport=udp": 3540}


def test_interval_too_brief_gets_423_with_min_expires() -> None:
    reg, _ = make_registrar()
    r = authorised(reg, expires=30)
    assert r.status == 423
    assert r.headers.get("Min-Expires") == "60"
    assert reg.contacts("alice", T0) == []
    r = authorised(reg, contacts=["<sip:alice@h1>;expires=59"], cseq=3)
    assert r.status == 423


def test_bad_expires_is_400() -> None:
    reg, _ = make_registrar()
    assert authorised(reg, contacts=["<sip:alice@h1>;expires=soon"]).status == 400


def test_out_of_order_cseq_with_same_call_id_is_refused() -> None:
    """§10.3 step 7: a delayed older REGISTER must not undo a newer one."""
    reg, _ = make_registrar()
    assert authorised(reg, cseq=10, expires=600).status == 200  # stored CSeq 11
    old = authorised(reg, cseq=5, expires=0)  # authorises with CSeq 6 < 11
    assert old.status == 500
    assert len(reg.contacts("alice", T0)) == 1
    star = authorised(reg, cseq=7, contacts=["*"], expires=0)
    assert star.status == 500
    assert len(reg.contacts("alice", T0)) == 1
    # A different Call-ID (the phone rebooted) may update whatever its CSeq.
    assert authorised(reg, cseq=1, call_id="after-reboot", expires=0).status == 200
    assert reg.contacts("alice", T0) == []


def test_updates_are_all_or_nothing() -> None:
    reg, _ = make_registrar()
    r = authorised(reg, contacts=["<sip:alice@h1>", "<sip:alice@h2>;expires=10"])
    assert r.status == 423
    assert reg.contacts("alice", T0) == []


def test_expiry() -> None:
    reg, _ = make_registrar()
    authorised(reg, contacts=["<sip:alice@h1>;expires=60", "<sip:alice@h2>;expires=120"])
    assert reg.next_expiry() == T0 + 60
    assert [b.uri for b in reg.contacts("alice", T0 + 61)] == ["sip:alice@h2"]
    assert reg.expire(T0 + 30) == []
    gone = reg.expire(T0 + 61)
    assert [b.uri for b in gone] == ["sip:alice@h1"]
    assert reg.user_at("192.0.2.10", now=T0 + 200) is None
    assert [b.uri for b in reg.expire(T0 + 121)] == ["sip:alice@h2"]
    assert reg.user_at("192.0.2.10") is None
    assert reg.next_expiry() is None


def test_user_at_with_several_users_behind_one_ip() -> None:
    reg, _ = make_registrar()
    alice = Peer("udp", "127.0.0.1", 5062)
    bob = Peer("udp", "127.0.0.1", 5064)
    authorised(reg, peer=alice)
    authorised(reg, peer=bob, user="bob", call_id="bob-1", now=T0 + 1)
    assert reg.user_at("127.0.0.1", 5062) == "alice"
    assert reg.user_at("127.0.0.1", 5064) == "bob"
    assert reg.user_at("127.0.0.1") in {"alice", "bob"}


def test_bindings_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "registrations.sqlite"
    reg, _ = make_registrar(db)
    authorised(reg, contacts=["<sip:alice@h1;transport=tcp>", "<sip:alice@h2>;expires=60"])
    reg.close()

    again, _ = make_registrar(db)
    bs = again.contacts("alice", T0 + 1)
    assert [b.uri for b in bs] == ["sip:alice@h1;transport=tcp", "sip:alice@h2"]
    assert bs[0].peer == ALICE_PHONE and bs[0].expires_at == T0 + 3600 and bs[0].cseq == 2
    assert again.user_at("192.0.2.10") == "alice"

    # Changes after the restart are written too: an expiry and an unregistration.
    assert [b.uri for b in again.expire(T0 + 61)] == ["sip:alice@h2"]
    again.close()
    third, _ = make_registrar(db)
    assert [b.uri for b in third.contacts("alice", T0 + 61)] == ["sip:alice@h1;transport=tcp"]
    assert authorised(third, contacts=["*"], expires=0, cseq=5, now=T0 + 62).status == 200
    third.close()
    fourth, _ = make_registrar(db)
    assert fourth.contacts("alice", T0 + 62) == []
    fourth.close()


def test_in_memory_registrar_keeps_nothing_between_instances() -> None:
    reg, _ = make_registrar(None)
    authorised(reg)
    assert make_registrar(None)[0].contacts("alice", T0) == []


def test_contacts_per_user_are_bounded() -> None:
    reg, _ = make_registrar()
    reg.max_contacts = 3
    for i in range(5):
        r = authorised(reg, contacts=[f"<sip:alice@h{i}>"], call_id=f"boot-{i}", now=T0 + i)
        assert r.status == 200
    assert [b.uri for b in reg.contacts("alice", T0 + 5)] == ["sip:alice@h2", "sip:alice@h3", "sip:alice@h4"]


def test_non_register_is_405() -> None:
    reg, _ = make_registrar()
    data = register().replace(b"REGISTER sip:", b"OPTIONS sip:").replace(b"1 REGISTER", b"1 OPTIONS")
    assert reg.handle(req(data), ALICE_PHONE, T0).status == 405
