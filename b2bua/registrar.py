"""The registrar: REGISTER in, Response out (RFC 3261 §10.3), with digest auth and lockout.

Sans-IO: `handle(request, peer, now)` never reads a clock or a socket. `now` is the
caller's monotonic clock (durations: lockouts, nonces); the `utc_at` function the caller
gives maps it to UTC, used where wall time belongs: binding expiries (persisted, they must
mean the same after a reboot, when the monotonic clock has restarted, and on every host of a
cluster) and the 200's Date header. Without `utc_at`, `now` is taken to be UTC already.
Bindings live in a `BindingsStore` (SQLite for one process, Redis shared by a cluster's
workers), which serves reads from memory.

Unknown users are not revealed (no 404): a REGISTER for any name is challenged, and
credentials for a user that does not exist get the same 401 re-challenge as a wrong
password (and count towards the same lockout), so the answers for "no such user" and
"wrong password" are indistinguishable. 403 is reserved for a source the lockout refuses and for
an authenticated user registering someone else's address-of-record (§10.3 step 6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from email.utils import formatdate
from pathlib import Path

from b2bua.auth import AuthResult, DigestAuthenticator, parse_auth_header
from b2bua.bindings_store import Binding, BindingsStore, SqliteBindingsStore
from b2bua.clock import UtcAt, same_clock
from b2bua.headers import parse_name_addr, parse_uri
from b2bua.lockout import Lockout
from b2bua.message import Request, Response, make_response
from b2bua.peer import Peer

__all__ = ["Binding", "Registrar", "DEFAULT_EXPIRES", "MIN_EXPIRES", "MAX_EXPIRES", "MAX_CONTACTS_PER_USER"]

#: RFC 3261 §10.2.1.1 suggests 3600 s when neither the Expires header nor param says.
DEFAULT_EXPIRES = 3600
#: Shorter registrations are refused with 423 (RFC 3261 §10.3 step 7, §21.4.17): a phone
#: re-registering every few seconds is load for nothing; 60 s is the RFC's own example.
MIN_EXPIRES = 60
#: Longer requests are shortened to this (RFC 3261 §10.3 step 7 lets the registrar
#: decrease it): a phone that vanished must not stay reachable for days.
MAX_EXPIRES = 7200
#: RFC 3261 §10.2.1.1: delta-seconds above 2**32-1 are taken as 2**32-1.
_MAX_DELTA_SECONDS = 2**32 - 1
#: Contacts kept per user. A phone behind NAT that reboots may register a new contact each
#: time while the old one lingers until it expires; past this, the contact expiring
#: soonest is dropped rather than refusing the phone that is registering now.
MAX_CONTACTS_PER_USER = 10

#: URI parameters that make two contact URIs different (RFC 3261 §19.1.4); other
#: parameters are ignored when deciding whether a REGISTER refreshes an existing binding.
_SIGNIFICANT_URI_PARAMS = ("user", "ttl", "method", "maddr", "transport")


class _Reject(Exception):
    """An early answer: carries the response status (h11-style, see style.md §4)."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def _raw_uri(contact: str) -> str:
    """The URI of a Contact value exactly as written: inside <...> if present, else up to
    the first ';' (RFC 3261 §20.10: without <> the parameters are header parameters)."""
    s = contact.strip()
    i = 0
    if s.startswith('"'):  # skip a quoted display name, which may itself contain '<'
        i = 1
        while i < len(s) and s[i] != '"':
            i += 2 if s[i] == "\\" else 1
        i += 1
    lt = s.find("<", i)
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise ValueError("unterminated <")
        return s[lt + 1 : gt].strip()
    return s.split(";", 1)[0].strip()


def _uri_key(uri: str) -> tuple[object, ...]:
    """Equality key for contact URIs, after RFC 3261 §19.1.4: scheme and host compare
    case-insensitively, user and password case-sensitively, and the significant params."""
    u = parse_uri(uri)
    params = {str(k).lower(): (v.lower() if isinstance(v, str) else v) for k, v in (u.params or {}).items()}
    return (
        str(u.scheme).lower(),
        u.user,
        u.password,
        str(u.host).lower(),
        u.port,
        tuple(params.get(name) for name in _SIGNIFICANT_URI_PARAMS),
    )


def _delta_seconds(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    v = value.strip()
    if not v.isdigit():
        raise _Reject(400, f"Bad Header: {what}")
    return min(int(v), _MAX_DELTA_SECONDS)


class Registrar:
    """Bindings of users to contacts, kept in a `BindingsStore`.

    `users` maps user name to digest password. `lockout` may be None for the defaults.
    `store` (a cluster's shared store) replaces the SQLite file at `db_path`.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        realm: str,
        db_path: str | Path | None,
        authenticator: DigestAuthenticator,
        lockout: Lockout | None = None,
        *,
        default_expires: int = DEFAULT_EXPIRES,
        min_expires: int = MIN_EXPIRES,
        max_expires: int = MAX_EXPIRES,
        max_contacts: int = MAX_CONTACTS_PER_USER,
        store: BindingsStore | None = None,
        utc_at: UtcAt = same_clock,
    ) -> None:
        self.users = dict(users)
        self.realm = realm
        self.authenticator = authenticator
        self.lockout = lockout if lockout is not None else Lockout()
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.max_contacts = max_contacts
        self.utc_at = utc_at
        self._store: BindingsStore = store if store is not None else SqliteBindingsStore(db_path)

    # -- queries --------------------------------------------------------------------

    def contacts(self, user: str, now: float) -> list[Binding]:
        """The user's live bindings (not yet expired at `now`), oldest registration first."""
        utc = self.utc_at(now)
        return [b for b in self._store.bindings(user) if b.expires_at > utc]

    def expires_in(self, binding: Binding, now: float) -> int:
        """Whole seconds `binding` has left at the caller's `now`."""
        return binding.expires_in(self.utc_at(now))

    def expire(self, now: float) -> list[Binding]:
        """Remove and return every binding expired at `now` (call it from a timer)."""
        utc = self.utc_at(now)
        gone = [b for b in self._store.all() if b.expires_at <= utc]
        if gone:
            self._store.remove(gone)
        return gone

    def next_expiry(self) -> float | None:
        """When the next binding expires, in UTC seconds (None: no bindings)."""
        times = [b.expires_at for b in self._store.all()]
        return min(times) if times else None

    def user_at(self, peer_host: str, port: int | None = None, *, now: float | None = None) -> str | None:
        """The user with a binding registered from this source IP, to recognise their calls.

        Several phones may share one IP (NAT, or tests on 127.0.0.1): with `port` the exact
        source address decides; otherwise the user whose binding from that IP was refreshed
        last is returned, so treat the answer as "a registered phone is there", not as
        proof of identity (authenticate for that). With `now`, expired bindings are
        ignored (without it, bindings count until `expire()` removes them).
        """
        if now is not None:
            now = self.utc_at(now)
        users: set[str] = set()
        exact: set[str] = set()
        latest: dict[str, float] = {}
        for b in self._store.all():
            if b.peer.host != peer_host or (now is not None and b.expires_at <= now):
                continue
            users.add(b.user)
            latest[b.user] = max(latest.get(b.user, b.expires_at), b.expires_at)
            if port is not None and b.peer.port == port:
                exact.add(b.user)
        if len(exact) == 1:
            return exact.pop()
        candidates = exact or users
        if not candidates:
            return None
        # Several users behind one IP and no port to tell them apart: the one whose
        # binding was refreshed last (latest expiry). Callers authenticate anyway.
        return max(candidates, key=latest.__getitem__)

    def close(self) -> None:
        """Close the store (bindings stay stored)."""
        self._store.close()

    # -- authentication (shared with the B2BUA for INVITEs) --------------------------

    def authenticate(
        self, request: Request, peer: Peer, now: float, *, proxy: bool = False
    ) -> tuple[str | None, Response | None]:
        """Digest-authenticate any request: (username, None) or (None, response to send).

        The response is 403 when the lockout refuses this source for the claimed user
        (without evaluating credentials; see lockout.py: a guessing IP, or an unknown
        address while the user is guarded), else 401 (or 407 with `proxy=True`, RFC 3261 §22.3) with a
        fresh challenge; stale=true when only the nonce had expired (RFC 7616 §3.3).
        """
        header = "Proxy-Authorization" if proxy else "Authorization"
        value = self._credentials_for_realm(request.headers.get_all(header))
        claimed = _auth_username(value) or self._to_user(request)
        if self.lockout.refused(peer, claimed, now):
            return None, self._respond(request, 403, "Forbidden")
        if value is None:
            return None, self._challenge(request, now, proxy=proxy, stale=False)
        result: AuthResult = self.authenticator.verify(request.method, value, self.users.get, now)
        if result.ok:
            self.lockout.record_success(peer, result.username, now)
            return result.username, None
        if result.counts_as_failure and self.lockout.record_failure(
            peer, result.username, now, user_exists=result.username in self.users
        ):
            return None, self._respond(request, 403, "Forbidden")
        return None, self._challenge(request, now, proxy=proxy, stale=result.stale)

    def _credentials_for_realm(self, values: list[str]) -> str | None:
        """Of several Authorization headers (one per realm, RFC 3261 §22.3), ours."""
        for v in values:
            parsed = parse_auth_header(v)
            if parsed is not None and parsed[1].get("realm") == self.realm:
                return v
        return values[0] if values else None

    def _challenge(self, request: Request, now: float, *, proxy: bool, stale: bool) -> Response:
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        status, reason = (407, "Proxy Authentication Required") if proxy else (401, "Unauthorized")
        values = self.authenticator.challenge(now, stale=stale)
        return self._respond(request, status, reason, tuple((name, v) for v in values))

    # -- REGISTER -------------------------------------------------------------------

    def handle(self, request: Request, peer: Peer, now: float) -> Response:
        """Answer one REGISTER (RFC 3261 §10.3); bindings change only on a 200."""
        if request.method != "REGISTER":
            return self._respond(request, 405, "Method Not Allowed", (("Allow", "REGISTER"),))
        try:
            aor_user = self._to_user(request)
            if aor_user is None:
                raise _Reject(400, "Bad Header: To")
            user, response = self.authenticate(request, peer, now)
            if response is not None:
                return response
            if user != aor_user:  # §10.3 step 6: authorised to register this AOR?
                raise _Reject(403, "Forbidden")
            self._update(aor_user, request, peer, self.utc_at(now))
        except _Reject as r:
            return self._respond(request, r.status, r.reason, r.headers)
        utc = self.utc_at(now)
        headers = [("Contact", f"<{b.uri}>;expires={b.expires_in(utc)}") for b in self.contacts(aor_user, now)]
        headers.append(("Date", formatdate(utc, usegmt=True)))  # §10.3 step 8, §20.17
        return self._respond(request, 200, "OK", tuple(headers))

    def _update(self, user: str, request: Request, peer: Peer, utc: float) -> None:
        """§10.3 steps 5-7: compute the new binding set, commit all or nothing (`utc`: UTC)."""
        try:
            call_id = request.call_id
            cseq = int(request.cseq[0])
        except Exception as e:  # noqa: BLE001 - whatever the message layer raises
            raise _Reject(400, "Bad Header: CSeq") from e
        if not call_id:
            raise _Reject(400, "Bad Header: Call-ID")
        header_expires = _delta_seconds(request.headers.get("Expires"), "Expires")
        contacts = [c for c in request.headers.get_all("Contact") if c.strip()]
        current = [b for b in self._store.bindings(user) if b.expires_at > utc]

        if any(c.strip() == "*" for c in contacts):
            # §10.3 step 6: "*" only alone and only with Expires: 0 (else 400).
            if len(contacts) != 1 or header_expires != 0:
                raise _Reject(400, "Bad Header: Contact")
            for b in current:
                if b.call_id == call_id and cseq <= b.cseq:
                    raise _Reject(500, "Out of Order CSeq")
            self._commit(user, [])
            return

        updated = {_uri_key(b.uri): b for b in current}
        for value in contacts:
            try:
                uri = _raw_uri(value)
                key = _uri_key(uri)
                params = parse_name_addr(value).params or {}
            except Exception as e:  # noqa: BLE001 - a bad Contact is the client's error
                raise _Reject(400, "Bad Header: Contact") from e
            param = {str(k).lower(): v for k, v in params.items()}.get("expires")
            expires = _delta_seconds(param, "Contact") if param is not None else header_expires
            if expires is None:
                expires = self.default_expires
            if 0 < expires < self.min_expires:
                raise _Reject(423, "Interval Too Brief", (("Min-Expires", str(self.min_expires)),))
            expires = min(expires, self.max_expires)
            old = updated.get(key)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                raise _Reject(500, "Out of Order CSeq")  # §10.3 step 7
            if expires == 0:
                updated.pop(key, None)
            else:
                updated[key] = Binding(user, uri, peer, utc + expires, call_id, cseq)
        if contacts:
            self._commit(user, list(updated.values()))

    def _commit(self, user: str, bindings: list[Binding]) -> None:
        if len(bindings) > self.max_contacts:
            bindings = sorted(bindings, key=lambda b: b.expires_at)[-self.max_contacts :]
        self._store.replace_user(user, bindings)

    def registered_from(self, host: str) -> bool:
        """True when some binding (not yet swept by `expire`) came from this IP: a phone
        is there, so it is no stranger (b2bua/strangers.py). O(1), asked per request."""
        return self._store.from_host(host)

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def _to_user(request: Request) -> str | None:
        to = request.headers.get("To")
        if to is None:
            return None
        try:
            return parse_name_addr(to).uri.user or None
        except Exception:  # noqa: BLE001 - a bad To is answered 400 by the caller
            return None

    @staticmethod
    def _respond(
        request: Request, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        """A response with a To tag derived from the request, so it is stable across
        retransmissions without any randomness (RFC 3261 §8.2.6.2)."""
        seed = f"{request.headers.get('Call-ID')}|{request.headers.get('From')}".encode("utf-8", "replace")
        tag = hashlib.sha256(seed).hexdigest()[:12]
        return make_response(request, status, reason, to_tag=tag, headers=headers)


def _auth_username(value: str | None) -> str | None:
    if value is None:
        return None
    parsed = parse_auth_header(value)
    return parsed[1].get("username") if parsed else None

