"""Digest core (b2bua/auth.py) and lockout (b2bua/lockout.py), without SIP messages."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b2bua.auth import (
    DigestAuthenticator,
    compute_response,
    parse_auth_header,
)

REALM = "pbx.example"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}
T0 = 1_700_000_000.0


# -- RFC 7616 §3.9.1 example -----------------------------------------------------------

RFC_ARGS = dict(
    username="Mufasa",
    realm="http-auth@example.org",
    password="Circle of Life",
    method="GET",
    uri="/dir/index.html",
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    qop="auth",
    nc="00000001",
    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
)


def test_rfc7616_md5_vector() -> None:
    assert compute_response("MD5", **RFC_ARGS) == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc7616_sha256_vector() -> None:
    assert (
        compute_response("SHA-256", **RFC_ARGS)
        == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_rfc7616_authorization_header_parses() -> None:
    value = (
        'Digest username="Mufasa",\r\n realm="http-auth@example.org",\r\n'
        ' uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",'
        ' nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth,'
        ' response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",'
        ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    parsed = parse_auth_header(value)
    assert parsed is not None
    scheme, params = parsed
    assert scheme == "Digest"
    assert params["username"] == "Mufasa"
    assert params["nc"] == "00000001"
    assert params["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


# -- header parsing ---------------------------------------------------------------------


def test_parse_escapes_spaces_order_unknown_params() -> None:
    parsed = parse_auth_header('digest  X-Thing = 42 ,username = "a\\"b\\\\c" ,realm="r, with comma"')
    assert parsed == ("digest", {"x-thing": "42", "username": 'a"b\\c', "realm": "r, with comma"})


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",  # no params is fine syntactically, but has no username
        'Digest username="unterminated',
        "Digest username",
        "Digest =x",
        'Digest username="a" realm="b"',  # missing comma
        'Digest username="a", username="b"',  # repeated
        'Basic dXNlcjpwYXNz',
    ],
)
def test_malformed_headers_fail_without_raising(value: str) -> None:
    auth = DigestAuthenticator(REALM, "k")
    result = auth.verify("REGISTER", value, PASSWORDS.get, T0)
    assert not result.ok
    assert not result.stale


# -- a client answering our challenge ---------------------------------------------------


def _params(challenge: str) -> dict[str, str]:
    parsed = parse_auth_header(challenge)
    assert parsed is not None
    return parsed[1]


def answer(
    challenge: str,
    user: str = "alice",
    password: str = "alice-secret",
    *,
    nc: int = 1,
    qop: bool = True,
    method: str = "REGISTER",
    uri: str = "sip:pbx.example",
    cnonce: str = "0a4f113b",
    extra: str = "",
) -> str:
    """What a phone sends back (RFC 7616 §3.4)."""
    p = _params(challenge)
    alg = p["algorithm"]
    ncs = f"{nc:08x}"
    if qop:
        resp = compute_response(alg, user, p["realm"], password, method, uri, p["nonce"], qop="auth", nc=ncs, cnonce=cnonce)
        q = f', qop=auth, nc={ncs}, cnonce="{cnonce}"'
    else:
        resp = compute_response(alg, user, p["realm"], password, method, uri, p["nonce"])
        q = ""
    return (
        f'Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", uri="{uri}", '
        f'response="{resp}", algorithm={alg}, opaque="{p["opaque"]}"{q}{extra}'
    )


def test_challenge_offers_sha256_then_md5_with_qop_and_opaque() -> None:
    values = DigestAuthenticator(REALM, "k").challenge(T0)
    assert [_params(v)["algorithm"] for v in values] == ["SHA-256", "MD5"]
    for v in values:
        p = _params(v)
        assert p["realm"] == REALM and p["qop"] == "auth" and p["opaque"] and p["nonce"]
        assert "stale" not in p
    assert _params(values[0])["nonce"] == _params(values[1])["nonce"]


def test_challenge_order_is_configurable() -> None:
    values = DigestAuthenticator(REALM, "k", algorithms=["md5", "SHA-256"]).challenge(T0)
    assert [_params(v)["algorithm"] for v in values] == ["MD5", "SHA-256"]
    only = DigestAuthenticator(REALM, "k", algorithms=["MD5"]).challenge(T0)
    assert len(only) == 1
    with pytest.raises(ValueError):
        DigestAuthenticator(REALM, "k", algorithms=["SHA-1"])


def test_nonces_are_unique_even_at_the_same_instant() -> None:
    auth = DigestAuthenticator(REALM, "k")
    nonces = {_params(auth.challenge(T0)[0])["nonce"] for _ in range(50)}
    assert len(nonces) == 50


@pytest.mark.parametrize("index", [0, 1])
def test_valid_response_for_each_algorithm(index: int) -> None:
    auth = DigestAuthenticator(REALM, "k")
    ch = auth.challenge(T0)[index]
    result = auth.verify("REGISTER", answer(ch), PASSWORDS.get, T0 + 1)
    assert result.ok and result.username == "alice" and result.reason == "ok"


def test_algorithm_absent_means_md5() -> None:
    auth = DigestAuthenticator(REALM, "k")
    value = answer(auth.challenge(T0)[1]).replace(", algorithm=MD5", "")
    assert auth.verify("REGISTER", value, PASSWORDS.get, T0).ok


def test_algorithm_not_offered_is_refused() -> None:
    auth = DigestAuthenticator(REALM, "k", algorithms=["SHA-256"])
    ch = auth.challenge(T0)[0].replace("algorithm=SHA-256", "algorithm=MD5")
    result = auth.verify("REGISTER", answer(ch), PASSWORDS.get, T0)
    assert not result.ok and result.reason == "unsupported-algorithm"


def test_wrong_password_and_unknown_user_fail_alike() -> None:
    auth = DigestAuthenticator(REALM, "k")
    wrong = auth.verify("REGISTER", answer(auth.challenge(T0)[0], password="guess"), PASSWORDS.get, T0)
    nobody = auth.verify("REGISTER", answer(auth.challenge(T0)[0], user="mallory"), PASSWORDS.get, T0)
    for r in (wrong, nobody):
        assert not r.ok and not r.stale and r.counts_as_failure
    assert nobody.username == "mallory"


def test_wrong_method_fails() -> None:
    auth = DigestAuthenticator(REALM, "k")
    r = auth.verify("INVITE", answer(auth.challenge(T0)[0]), PASSWORDS.get, T0)
    assert not r.ok


def test_uri_form_is_not_compared_to_anything() -> None:
    auth = DigestAuthenticator(REALM, "k")
    r = auth.verify("REGISTER", answer(auth.challenge(T0)[0], uri="sip:pbx.example:5060;transport=udp"), PASSWORDS.get, T0)
    assert r.ok


def test_wrong_realm_fails() -> None:
    auth = DigestAuthenticator(REALM, "k")
    ch = auth.challenge(T0)[0].replace(REALM, "other.example")
    r = auth.verify("REGISTER", answer(ch), PASSWORDS.get, T0)
    assert not r.ok and r.reason == "wrong-realm"


def test_forged_or_foreign_nonce_fails() -> None:
    ours = DigestAuthenticator(REALM, "k")
    theirs = DigestAuthenticator(REALM, "other-secret")
    r = ours.verify("REGISTER", answer(theirs.challenge(T0)[0]), PASSWORDS.get, T0)
    assert not r.ok and r.reason == "bad-nonce" and not r.stale


def test_nonce_from_before_a_restart_is_stale_not_replayable() -> None:
    """The replay table died with the old process, so the new one cannot vouch for the
    nonce's nc: stale=true makes the phone retry at once with a fresh nonce."""
    old = DigestAuthenticator(REALM, "k")
    ch = old.challenge(T0)[0]
    assert old.verify("REGISTER", answer(ch), PASSWORDS.get, T0 + 1).ok
    new = DigestAuthenticator(REALM, "k")
    r = new.verify("REGISTER", answer(ch), PASSWORDS.get, T0 + 5)
    assert not r.ok and r.stale and not r.counts_as_failure
    assert new.verify("REGISTER", answer(new.challenge(T0 + 5)[0]), PASSWORDS.get, T0 + 6).ok


def test_expired_nonce_with_right_password_is_stale() -> None:
    auth = DigestAuthenticator(REALM, "k", nonce_ttl=300)
    ch = auth.challenge(T0)[0]
    assert auth.verify("REGISTER", answer(ch), PASSWORDS.get, T0 + 299).ok
    r = auth.verify("REGISTER", answer(ch, nc=2), PASSWORDS.get, T0 + 301)
    assert not r.ok and r.stale and r.reason == "stale" and not r.counts_as_failure
    assert all(_params(v)["stale"] == "true" for v in auth.challenge(T0 + 301, stale=True))


def test_expired_nonce_with_wrong_password_is_not_stale() -> None:
    auth = DigestAuthenticator(REALM, "k", nonce_ttl=300)
    r = auth.verify("REGISTER", answer(auth.challenge(T0)[0], password="x"), PASSWORDS.get, T0 + 301)
    assert not r.ok and not r.stale and r.counts_as_failure


def test_nc_must_strictly_increase() -> None:
    auth = DigestAuthenticator(REALM, "k")
    ch = auth.challenge(T0)[0]
    assert auth.verify("REGISTER", answer(ch, nc=1), PASSWORDS.get, T0).ok
    replay = auth.verify("REGISTER", answer(ch, nc=1), PASSWORDS.get, T0 + 1)
    assert not replay.ok and replay.reason == "replay"
    assert auth.verify("REGISTER", answer(ch, nc=2), PASSWORDS.get, T0 + 2).ok
    assert not auth.verify("REGISTER", answer(ch, nc=2, cnonce="other"), PASSWORDS.get, T0 + 3).ok
    assert auth.verify("REGISTER", answer(ch, nc=5), PASSWORDS.get, T0 + 3).ok
    assert not auth.verify("REGISTER", answer(ch, nc=4), PASSWORDS.get, T0 + 4).ok


def test_failed_attempt_does_not_burn_the_nc() -> None:
    auth = DigestAuthenticator(REALM, "k")
    ch = auth.challenge(T0)[0]
    assert not auth.verify("REGISTER", answer(ch, password="x"), PASSWORDS.get, T0).ok
    assert auth.verify("REGISTER", answer(ch), PASSWORDS.get, T0).ok


def test_rfc2069_response_without_qop_is_single_use() -> None:
    auth = DigestAuthenticator(REALM, "k")
    ch = auth.challenge(T0)[1]
    assert auth.verify("REGISTER", answer(ch, qop=False), PASSWORDS.get, T0).ok
    again = auth.verify("REGISTER", answer(ch, qop=False), PASSWORDS.get, T0 + 1)
    assert not again.ok and again.reason == "replay"
    assert not auth.verify("REGISTER", answer(ch, nc=9), PASSWORDS.get, T0 + 1).ok


def test_qop_without_nc_or_cnonce_is_malformed() -> None:
    auth = DigestAuthenticator(REALM, "k")
    v = answer(auth.challenge(T0)[0])
    assert auth.verify("REGISTER", re.sub(r', nc=\w+', "", v), PASSWORDS.get, T0).reason == "malformed"
    assert auth.verify("REGISTER", re.sub(r', cnonce="\w+"', "", v), PASSWORDS.get, T0).reason == "malformed"


def test_unsupported_qop_is_refused() -> None:
    auth = DigestAuthenticator(REALM, "k")
    v = answer(auth.challenge(T0)[0]).replace("qop=auth", "qop=auth-int")
    assert auth.verify("REGISTER", v, PASSWORDS.get, T0).reason == "unsupported-qop"


def test_uppercase_response_hex_and_unknown_params_are_accepted() -> None:
    auth = DigestAuthenticator(REALM, "k")
    v = answer(auth.challenge(T0)[0], extra=', x-vendor="yes"')
    v = re.sub(r'response="(\w+)"', lambda m: f'response="{m.group(1).upper()}"', v)
    assert auth.verify("REGISTER", v, PASSWORDS.get, T0).ok


def test_replay_table_is_bounded_and_evicted_nonces_are_stale_not_replayable() -> None:
    auth = DigestAuthenticator(REALM, "k", max_tracked_nonces=3)
    first = auth.challenge(T0)[0]
    assert auth.verify("REGISTER", answer(first), PASSWORDS.get, T0).ok
    for i in range(3):
        assert auth.verify("REGISTER", answer(auth.challenge(T0 + 1 + i)[0]), PASSWORDS.get, T0 + 1 + i).ok
    assert len(auth._seen) == 3
    r = auth.verify("REGISTER", answer(first, nc=1), PASSWORDS.get, T0 + 5)
    assert not r.ok and r.stale


@settings(max_examples=300)
@given(st.text(max_size=300), st.text(max_size=20))
def test_verify_never_raises_on_arbitrary_headers(value: str, method: str) -> None:
    auth = DigestAuthenticator(REALM, "k")
    result = auth.verify(method, value, PASSWORDS.get, T0)
    assert not result.ok


_param_values = st.one_of(st.text(max_size=40), st.from_regex(r"[A-Za-z0-9+/=._-]{0,40}", fullmatch=True))


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "algorithm", "opaque", "userhash", "x"]),
        _param_values,
    ),
    st.booleans(),
)
def test_verify_never_raises_on_digest_shaped_headers(params: dict[str, str], use_real_nonce: bool) -> None:
    auth = DigestAuthenticator(REALM, "k")
    if use_real_nonce:
        params["nonce"] = _params(auth.challenge(T0)[0])["nonce"]
    body = ", ".join(f'{k}="' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for k, v in params.items())
    result = auth.verify("REGISTER", "Digest " + body, PASSWORDS.get, T0)
    assert isinstance(result.ok, bool)


# The lockout (b2bua/lockout.py) has its own tests: tests/test_lockout.py.
