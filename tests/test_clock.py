"""Issue 16 finding 4: one clock for durations (monotonic), UTC where people read it and
for what is stored. The server's `now` is the loop's monotonic clock; before the fix the
registrar used it as wall time (Date: 1970, lockout until=1970, stored expiries that meant
nothing after a reboot)."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

from b2bua.auth import DigestAuthenticator
from b2bua.clock import FakeClock, iso_utc
from b2bua.lockout import Lockout
from b2bua.registrar import Registrar
from tests.test_registrar import ALICE_PHONE, REALM, USERS, digest_for, register, req


def registrar(db, clock: FakeClock, lines: list[str] | None = None) -> Registrar:
    lockout = Lockout(max_failures=2, log=(lines if lines is not None else []).append, utc_at=clock.utc_at)
    return Registrar(USERS, REALM, db, DigestAuthenticator(REALM, "s"), lockout, utc_at=clock.utc_at)


def register_alice(reg: Registrar, clock: FakeClock):
    first = reg.handle(req(register()), ALICE_PHONE, clock.now)
    assert first.status == 401
    return reg.handle(req(register(cseq=2, authorization=digest_for(first))), ALICE_PHONE, clock.now)


def test_the_200_to_register_carries_utc_date_when_now_is_monotonic(tmp_path) -> None:
    clock = FakeClock(now=1880.0, utc=1_780_000_000.0)  # monotonic: 31 minutes since boot
    ok = register_alice(registrar(tmp_path / "r.db", clock), clock)
    assert ok.status == 200
    assert parsedate_to_datetime(ok.headers.get("Date")).timestamp() == 1_780_000_000
    assert ";expires=3600" in ok.headers.get("Contact")


def test_stored_bindings_survive_a_reboot_of_the_monotonic_clock(tmp_path) -> None:
    clock = FakeClock(now=50_000.0, utc=1_780_000_000.0)
    first = registrar(tmp_path / "r.db", clock)
    assert register_alice(first, clock).status == 200
    first.close()
    clock.reboot(now=3.0)  # the machine restarts 10 minutes later
    clock.advance(600)
    again = registrar(tmp_path / "r.db", clock)
    contacts = again.contacts("alice", clock.now)
    assert [again.expires_in(b, clock.now) for b in contacts] == [3000]
    assert again.user_at(ALICE_PHONE.host, now=clock.now) == "alice"
    assert again.expire(clock.now) == []
    clock.advance(3001)
    assert [b.user for b in again.expire(clock.now)] == ["alice"]


def test_lockout_line_says_until_in_utc(tmp_path) -> None:
    clock = FakeClock(now=1880.0, utc=1_780_000_000.0)
    lines: list[str] = []
    reg = registrar(None, clock, lines)
    for cseq in (1, 3):
        challenge = reg.handle(req(register(cseq=cseq)), ALICE_PHONE, clock.now)
        reg.handle(req(register(cseq=cseq + 1, authorization=digest_for(challenge, password="wrong"))),
                   ALICE_PHONE, clock.now)
    until = [m.group(1) for line in lines if (m := re.search(r"until=(\S+)", line))]
    assert until and until[0].startswith(iso_utc(1_780_000_000.0)[:4]) and not until[0].startswith("1970")


def test_the_first_nonce_of_a_process_is_not_stale_with_utc_nonce_times() -> None:
    """Nonce times are UTC (shared by a cluster's hosts); at ~1.8e9 s a float `now - 1e-6`
    mark could round onto the first nonce's issue time and answer it stale (seen in the soak)."""
    from b2bua.auth import compute_response, parse_auth_header

    # 4% of UTC instants hit the rounding; these three do (1_796_591_022.7270908 found by search).
    for start in (1_796_591_022.7270908, 1_796_591_022.140832, 1_780_000_000.0):
        clock = FakeClock(now=1000.0, utc=start)
        auth = DigestAuthenticator(REALM, "s", utc_at=clock.utc_at, algorithms=("MD5",))
        params = parse_auth_header(auth.challenge(clock.now)[0])[1]  # type: ignore[index]
        resp = compute_response("MD5", "alice", REALM, "alice-secret", "REGISTER", "sip:x", params["nonce"],
                                qop="auth", nc="00000001", cnonce="c")
        header = (f'Digest username="alice", realm="{REALM}", nonce="{params["nonce"]}", uri="sip:x", '
                  f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c"')
        result = auth.verify("REGISTER", header, {"alice": "alice-secret"}.get, clock.now)
        assert result.ok, (start, result)
