"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).

This module knows nothing of SIP messages: strings go in (method, header value), strings
come out (challenge header values, an `AuthResult`). The registrar and the B2BUA wrap it
for REGISTER and INVITE; keeping it message-free lets the RFC 7616 vectors test it alone.

Nonces are stateless: `issued-time . counter . HMAC(secret, issued-time . counter)`, so no
per-challenge state is kept. The only state is a bounded replay table (nonce -> highest
nonce-count seen), needed because RFC 7616 §3.4 makes the server responsible for
rejecting a reused nc. A nonce the table cannot vouch for (evicted, or issued before this
instance started, whose table died with the old process) is answered stale=true: the
phone retries at once with a fresh nonce, and a captured response cannot be replayed.

In a cluster the workers share the secret and the table (`shared`, see nonce_counts.py):
a challenge from one worker is answered to another, and a replay to a third is refused.
Nonce times are then UTC (`utc_at`), since the workers' monotonic clocks differ by host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Seconds a nonce is accepted after it was issued. After this an otherwise correct
#: response gets a new challenge with stale=true (RFC 7616 §3.3), so the phone retries
#: silently with the same password. 300 s is a common SIP server default (Asterisk uses 10 s
#: per-nonce, Kamailio 300 s): long enough for a phone's re-REGISTER to reuse it.
NONCE_TTL = 300.0

#: Most nonces whose nonce-count we remember for replay protection. Each live nonce is one
#: dict entry; 10,000 covers thousands of phones re-registering within NONCE_TTL while
#: bounding memory against a flood. Evicted nonces are treated as stale, never replayable.
MAX_TRACKED_NONCES = 10_000

#: RFC 7616 §3.4.2: the nc parameter is exactly 8 hex digits; we tolerate shorter ones.
MAX_NC_DIGITS = 8

#: Longest Authorization header value we parse. Real ones are < 1 KB; this bounds the
#: parser's work against a hostile header (the message layer bounds the whole message).
MAX_HEADER_LENGTH = 8192

#: Hash functions by RFC 7616 §6.1 algorithm name (case-insensitive on the wire).
HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}

#: The default offer order: RFC 8760 §2.4 says the strongest first; phones that only read
#: the first challenge get SHA-256, older ones skip to MD5.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("SHA-256", "MD5")

#: The single-use marker stored for RFC 2069 (no qop) nonces: no nc can exceed it.
_SINGLE_USE = 1 << 64

# Reasons an `AuthResult` can carry; `FAILURE_REASONS` are the ones that suggest a wrong
# password (and so count towards a lockout); the rest are protocol noise or clock skew.
OK = "ok"
MISSING = "missing"
MALFORMED = "malformed"
WRONG_REALM = "wrong-realm"
BAD_ALGORITHM = "unsupported-algorithm"
BAD_QOP = "unsupported-qop"
BAD_NONCE = "bad-nonce"
STALE = "stale"
REPLAY = "replay"
UNKNOWN_USER = "unknown-user"
BAD_RESPONSE = "bad-response"
FAILURE_REASONS = frozenset({UNKNOWN_USER, BAD_RESPONSE})


@dataclass(frozen=True)
class AuthResult:
    """The verdict on one Authorization header.

    `username` is set whenever the header named one (even on failure) so the caller can
    count failures against that user. `stale` asks for a fresh challenge with stale=true.
    """

    ok: bool
    username: str | None
    stale: bool
    reason: str

    @property
    def counts_as_failure(self) -> bool:
        """True when this looks like a password guess (a lockout should count it)."""
        return self.reason in FAILURE_REASONS


def _b(s: str) -> bytes:
    """Encode a header-derived string for hashing; never raises on odd code points."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace")


def _h(algorithm: str, data: str) -> str:
    return HASHES[algorithm](_b(data)).hexdigest()


def compute_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest of RFC 7616 §3.4.1 (qop=auth) or RFC 2069 (qop absent).

    Pure function, also used by tests and by the B2BUA when it answers a challenge itself.
    """
    algorithm = _canonical_algorithm(algorithm) or algorithm
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")  # §3.4.2 A1
    ha2 = _h(algorithm, f"{method}:{uri}")  # §3.4.3 A2 for qop=auth
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _canonical_algorithm(name: str) -> str | None:
    for known in HASHES:
        if known.lower() == name.lower():
            return known
    return None


def parse_auth_header(value: str) -> tuple[str, dict[str, str]] | None:
    """Split `Scheme name=value, name="quoted \\"value\\"", ...` (RFC 7235 §2.1).

    Returns (scheme, params with lower-cased names) or None when malformed. Tolerant of
    spaces around `=` and commas, any order and unknown parameters; a repeated parameter
    is malformed (RFC 7235 §2.2: each name at most once). Never raises.
    """
    if not isinstance(value, str) or len(value) > MAX_HEADER_LENGTH:
        return None
    s = value.strip()
    i = 0
    n = len(s)
    while i < n and not s[i].isspace():
        i += 1
    scheme = s[:i]
    if not scheme or not _is_token(scheme):
        return None
    params: dict[str, str] = {}
    while True:
        while i < n and (s[i].isspace() or s[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and s[i] not in "=," and not s[i].isspace():
            i += 1
        name = s[start:i].lower()
        if not name or not _is_token(name):
            return None
        while i < n and s[i].isspace():
            i += 1
        if i >= n or s[i] != "=":
            return None
        i += 1
        while i < n and s[i].isspace():
            i += 1
        if i < n and s[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and s[i] != '"':
                if s[i] == "\\" and i + 1 < n:
                    i += 1  # quoted-pair (RFC 3261 §25.1): take the next char literally
                chars.append(s[i])
                i += 1
            if i >= n:
                return None  # unterminated quoted string
            i += 1
            val = "".join(chars)
        else:
            start = i
            while i < n and s[i] != "," and not s[i].isspace():
                i += 1
            val = s[start:i]
            if not val:
                return None
        while i < n and s[i].isspace():
            i += 1
        if i < n and s[i] != ",":
            return None
        if name in params:
            return None
        params[name] = val
    return scheme, params


_TOKEN_EXTRA = set("-.!%*_+`'~")


def _is_token(s: str) -> bool:
    """RFC 3261 §25.1 token characters."""
    return all((c.isascii() and c.isalnum()) or c in _TOKEN_EXTRA for c in s)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class SharedNonceCounts(Protocol):
    """A nonce-count table shared between processes (nonce_counts.RedisNonceCounts)."""

    def advance(self, nonce: str, nc: int, issued: float, now: float, ttl: float) -> str | None:
        """"ok" (recorded), "replay", "stale" (cannot vouch), or None (unreachable)."""
        ...


class DigestAuthenticator:
    """Issues Digest challenges and checks responses against them (server side).

    `secret` keys the nonce HMAC; keep it stable across restarts so outstanding nonces
    survive. `algorithms` is the offer order: SHA-256 first by default (RFC 8760 §2.4), but
    some phones only read the first challenge and only know MD5, so it is configurable.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes | str,
        nonce_ttl: float = NONCE_TTL,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        max_tracked_nonces: int = MAX_TRACKED_NONCES,
        shared: SharedNonceCounts | None = None,
        utc_at: Callable[[float], float] | None = None,
    ) -> None:
        canonical = []
        for name in algorithms:
            c = _canonical_algorithm(name)
            if c is None:
                raise ValueError(f"unsupported digest algorithm {name!r}; known: {', '.join(HASHES)}")
            if c not in canonical:
                canonical.append(c)
        if not canonical:
            raise ValueError("at least one digest algorithm is needed")
        self.realm = realm
        self.algorithms: tuple[str, ...] = tuple(canonical)
        self.nonce_ttl = nonce_ttl
        self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._opaque = hmac.new(self._secret, b"opaque:" + _b(realm), hashlib.sha256).hexdigest()[:32]
        self._counter = 0  # makes nonces issued in the same microsecond distinct
        self._max_tracked = max_tracked_nonces
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # nonce -> (issued, nc)
        self._evicted_up_to: float | None = None  # nonces issued at or before this are stale
        self._last_now = 0.0  # latest `now` seen, for challenge() called without one
        self._shared = shared
        self._utc_at = utc_at  # the caller's `now` -> nonce time (UTC, shared by hosts)

    # -- nonces ---------------------------------------------------------------------

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, b"nonce:" + body, hashlib.sha256).digest()[:16]

    def make_nonce(self, now: float) -> str:
        """A fresh nonce: issue time and a counter, authenticated by HMAC (RFC 7616 §3.3)."""
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        body = struct.pack(">qI", int(now * 1_000_000), self._counter)
        return base64.urlsafe_b64encode(body + self._mac(body)).decode().rstrip("=")

    def _nonce_issued(self, nonce: str) -> float | None:
        """The issue time of a nonce we made, or None if it is not ours (bad MAC/format)."""
        if len(nonce) != 38:  # 12 body + 16 MAC bytes, base64 without padding
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "==")
        except (ValueError, TypeError):
            return None
        if len(raw) != 28:
            return None
        body, mac = raw[:12], raw[12:]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        micros, _ = struct.unpack(">qI", body)
        return micros / 1_000_000

    # -- challenge ------------------------------------------------------------------

    def challenge(self, now: float | None = None, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, in offer order.

        All share one nonce (the phone answers only one). RFC 8760 §2.4: one challenge per
        algorithm, most preferred first. qop="auth" only: auth-int needs the body and no
        phone we know of requires it.

        Pass `now`: the nonce carries its issue time. Without it (older callers) the latest
        `now` this authenticator was given is used, so the logic still never reads a clock;
        at worst the phone gets one extra stale=true round trip.
        """
        if now is None:
            now = self._last_now
        elif self._utc_at is not None:
            now = self._utc_at(now)
        self._observe(now)
        nonce = self.make_nonce(now)
        values = []
        for algorithm in self.algorithms:
            v = (
                f"Digest realm={_quote(self.realm)}, nonce={_quote(nonce)}, "
                f"opaque={_quote(self._opaque)}, algorithm={algorithm}, qop=\"auth\""
            )
            if stale:
                v += ", stale=true"
            values.append(v)
        return values

    def _observe(self, now: float) -> None:
        """Track the latest `now`; the first one marks where our replay memory begins."""
        if self._evicted_up_to is None:
            # In make_nonce's own units (whole microseconds): with UTC times (~1.8e9 s) a
            # float `now - 1e-6` can round to at or above the first nonce's issue time,
            # which made the very first challenge stale.
            self._evicted_up_to = (int(now * 1_000_000) - 1) / 1_000_000
        self._last_now = max(self._last_now, now)

    # -- verification ---------------------------------------------------------------

    def verify(
        self,
        method: str,
        header_value: str | None,
        password_for: Callable[[str], str | None],
        now: float,
    ) -> AuthResult:
        """Check one Authorization / Proxy-Authorization value. Never raises.

        `password_for(username)` returns the password or None for an unknown user; an
        unknown user is hashed against a dummy password so the answer takes the same
        time and reads the same as a wrong password (no user enumeration).
        The uri parameter is used as sent: RFC 3261 §22.4 asks for it to match the
        Request-URI, but phones differ in form (port, params) and the nonce already binds
        the response to us, so we do not compare it.
        """
        try:
            if self._utc_at is not None:
                now = self._utc_at(now)
            self._observe(now)
            return self._verify(method, header_value, password_for, now)
        except Exception:  # noqa: BLE001 - a hostile header must never crash the server
            return AuthResult(False, None, False, MALFORMED)

    def _verify(
        self,
        method: str,
        header_value: str | None,
        password_for: Callable[[str], str | None],
        now: float,
    ) -> AuthResult:
        if not header_value:
            return AuthResult(False, None, False, MISSING)
        parsed = parse_auth_header(header_value)
        if parsed is None or parsed[0].lower() != "digest":
            return AuthResult(False, None, False, MALFORMED)
        p = parsed[1]
        username = p.get("username")
        if not all(p.get(k) for k in ("username", "realm", "nonce", "response")) or "uri" not in p:
            return AuthResult(False, username, False, MALFORMED)
        if p.get("userhash", "false").lower() == "true":
            return AuthResult(False, username, False, MALFORMED)  # userhash never offered
        assert username is not None
        if p["realm"] != self.realm:
            return AuthResult(False, username, False, WRONG_REALM)
        algorithm = _canonical_algorithm(p.get("algorithm", "MD5"))  # §3.4: absent means MD5
        if algorithm is None or algorithm not in self.algorithms:
            return AuthResult(False, username, False, BAD_ALGORITHM)
        qop = p.get("qop")
        nc_value = 0
        if qop is not None:
            if qop.lower() != "auth":
                return AuthResult(False, username, False, BAD_QOP)
            nc, cnonce = p.get("nc", ""), p.get("cnonce", "")
            if not cnonce or not (0 < len(nc) <= MAX_NC_DIGITS) or not _is_hex(nc):
                return AuthResult(False, username, False, MALFORMED)
            nc_value = int(nc, 16)
            if nc_value == 0:
                return AuthResult(False, username, False, MALFORMED)
        nonce = p["nonce"]
        issued = self._nonce_issued(nonce)
        if issued is None:
            return AuthResult(False, username, False, BAD_NONCE)

        password = password_for(username)
        expected = compute_response(
            algorithm,
            username,
            self.realm,
            password if password is not None else "\x00unknown-user",
            method,
            p["uri"],
            nonce,
            qop=qop.lower() if qop is not None else None,
            nc=p.get("nc"),
            cnonce=p.get("cnonce"),
        )
        matches = hmac.compare_digest(_b(expected), _b(p["response"].lower()))
        if password is None:
            return AuthResult(False, username, False, UNKNOWN_USER)
        if not matches:
            return AuthResult(False, username, False, BAD_RESPONSE)

        # The password is right; now is the nonce still usable? (RFC 7616 §3.3 stale)
        self._forget_expired(now)
        if now - issued > self.nonce_ttl or issued > now + self.nonce_ttl:
            return AuthResult(False, username, True, STALE)
        nc_kept = _SINGLE_USE if qop is None else nc_value
        if self._shared is not None:
            verdict = self._shared.advance(nonce, nc_kept, issued, now, self.nonce_ttl)
            if verdict == "replay":
                return AuthResult(False, username, False, REPLAY)
            if verdict == "stale":
                return AuthResult(False, username, True, STALE)
            if verdict == "ok":
                self._remember(nonce, issued, nc_kept)  # kept locally too, for an outage
                return AuthResult(True, username, False, OK)
            # None: the shared table is unreachable; this worker's own table answers.
        seen = self._seen.get(nonce)
        if seen is None and self._evicted_up_to is not None and issued <= self._evicted_up_to:
            return AuthResult(False, username, True, STALE)  # forgotten: cannot rule out replay
        if seen is not None and nc_value <= seen[1]:
            return AuthResult(False, username, False, REPLAY)  # §3.4: nc must increase
        self._remember(nonce, issued, nc_kept)
        return AuthResult(True, username, False, OK)

    def _remember(self, nonce: str, issued: float, nc: int) -> None:
        self._seen[nonce] = (issued, nc)
        self._seen.move_to_end(nonce)
        while len(self._seen) > self._max_tracked:
            _, (old_issued, _) = self._seen.popitem(last=False)
            self._evicted_up_to = max(self._evicted_up_to or old_issued, old_issued)

    def _forget_expired(self, now: float) -> None:
        """Drop replay entries for nonces past their TTL: they are refused as stale anyway."""
        while self._seen:
            nonce, (issued, _) = next(iter(self._seen.items()))
            if now - issued <= self.nonce_ttl:
                break
            del self._seen[nonce]


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)
