"""SIP dialogs (RFC 3261 §12): the state two user agents share, and in-dialog requests.

A `Dialog` is plain data plus the rules of §12.2: how to build a request inside it
(§12.2.1.1: Request-URI, Route, tags, CSeq), how to check one received inside it
(§12.2.2: CSeq ordering) and when its remote target changes (target refresh). It never
sends anything: the TU hands what it builds to the transaction layer, so the dialog is
tested with messages alone. Each B2BUA leg owns one; there is no shared state.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from b2bua.headers import NameAddr, Via, parse_name_addr, parse_via
from b2bua.message import Headers, Request, Response

#: RFC 3261 §8.1.1.5: our first CSeq in a dialog the peer created ("SHOULD be less than
#: 2**31"); any value works since the peer keeps its own remote sequence. 1 is readable.
INITIAL_LOCAL_SEQ = 1
#: RFC 3261 §8.1.1.5: CSeq numbers are 32-bit; we never go beyond.
MAX_CSEQ = 2**31 - 1
#: RFC 3261 §8.1.1.6: Max-Forwards for requests we originate.
MAX_FORWARDS = 70
#: RFC 3261 §12.2.2: the status for an in-dialog request whose CSeq went backwards.
OUT_OF_ORDER_STATUS = 500
#: RFC 3261 §12.2 (re-INVITE) and RFC 3311 §5.1 (UPDATE): requests, and their 2xx, that
#: replace the remote target with their Contact.
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
#: RFC 3261 §8.1.1.7: the branch prefix of RFC 3261 elements.
MAGIC_COOKIE = "z9hG4bK"

EARLY = "early"
CONFIRMED = "confirmed"


@dataclass(slots=True)
class Dialog:
    """Dialog state, field for field as RFC 3261 §12 lists it.

    `local_party`/`remote_party` are the From/To name-addr without tag (our From and To in
    requests we send: §12.2.1.1 takes them from the local and remote URI, keeping the
    display name is harmless and friendlier). `route_set` holds Route values in the order
    they are sent. `local_seq`/`remote_seq` are None while "empty" (§12.1.1, §12.1.2).
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_seq: int | None
    remote_seq: int | None
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    secure: bool = False
    local_party: str = ""
    remote_party: str = ""
    local_contact: str | None = None
    state: str = CONFIRMED

    # ------------------------------------------------------------------ creation

    @classmethod
    def from_uas(cls, request: Request, local_tag: str, local_contact: str | None, *, early: bool = False) -> Dialog:
        """RFC 3261 §12.1.1: the dialog a UAS creates when it answers `request` (2xx, or a
        1xx with a To tag for an early dialog)."""
        from_na = parse_name_addr(request.headers.get("From") or "")
        to_na = parse_name_addr(request.headers.get("To") or "")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_tag or "",
            local_seq=None,  # §12.1.1: empty until we send
            remote_seq=request.cseq[0],
            local_uri=str(to_na.uri),
            remote_uri=str(from_na.uri),
            remote_target=_contact_uri(request) or str(from_na.uri),
            route_set=list(request.headers.get_all("Record-Route")),  # §12.1.1: in order
            secure=_secure(request),
            local_party=_without_tag(to_na),
            remote_party=_without_tag(from_na),
            local_contact=local_contact,
            state=EARLY if early else CONFIRMED,
        )

    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """RFC 3261 §12.1.2: the dialog a UAC gets from a 2xx (or a tagged 1xx: early)."""
        from_na = parse_name_addr(request.headers.get("From") or "")
        to_na = parse_name_addr(response.headers.get("To") or request.headers.get("To") or "")
        return cls(
            call_id=request.call_id,
            local_tag=request.from_tag or "",
            remote_tag=response.to_tag or "",
            local_seq=request.cseq[0],
            remote_seq=None,  # §12.1.2: empty until the peer sends a request
            local_uri=str(from_na.uri),
            remote_uri=str(to_na.uri),
            remote_target=_contact_uri(response) or request.uri,
            # §12.1.2: the Record-Route values of the response, in reverse order
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            secure=_secure(request),
            local_party=_without_tag(from_na),
            remote_party=_without_tag(to_na),
            local_contact=request.headers.get("Contact"),
            state=CONFIRMED if 200 <= response.status < 300 else EARLY,
        )

    @property
    def id(self) -> tuple[str, str, str]:
        """RFC 3261 §12: the dialog ID, (Call-ID, local tag, remote tag)."""
        return (self.call_id, self.local_tag, self.remote_tag)

    def confirm(self) -> None:
        """An early dialog becomes confirmed on the 2xx (RFC 3261 §12.1, §13.2.2.4)."""
        self.state = CONFIRMED

    # ------------------------------------------------------------------ sending

    def create_request(
        self,
        method: str,
        via: str | Via,
        contact: str | None = None,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """RFC 3261 §12.2.1.1: a new request inside the dialog (not ACK or CANCEL).

        Bumps the local CSeq. `via` is our Via (a branch is added when it has none,
        §8.1.1.7). A target refresh (re-INVITE, UPDATE) carries `contact`, or the
        dialog's local Contact (§12.2.1.1 SHOULD); other methods only when given.
        """
        if method in ("ACK", "CANCEL"):
            raise ValueError(f"{method} reuses the INVITE's CSeq: use Dialog.ack or TransactionLayer.cancel")
        seq = INITIAL_LOCAL_SEQ if self.local_seq is None else self.local_seq + 1
        if seq > MAX_CSEQ:
            raise ValueError("local CSeq exhausted (RFC 3261 §8.1.1.5: below 2**31)")
        self.local_seq = seq
        if contact is None and method in TARGET_REFRESH_METHODS:
            contact = self.local_contact
        return self._build(method, seq, via, contact, body, headers)

    def ack(
        self,
        invite_cseq: int,
        via: str | Via,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """RFC 3261 §13.2.2.4: the ACK for a 2xx, built like any in-dialog request but
        with the INVITE's CSeq number, method ACK and a new branch (`via` should carry a
        fresh one; it gets one if it has none). The local CSeq does not move."""
        return self._build("ACK", invite_cseq, via, None, body, headers)

    def _build(
        self,
        method: str,
        seq: int,
        via: str | Via,
        contact: str | None,
        body: bytes,
        extra: Iterable[tuple[str, str]],
    ) -> Request:
        uri, routes = self.request_target()
        h = Headers()
        h.add("Via", _with_branch(via))
        h.add("Max-Forwards", str(MAX_FORWARDS))
        for route in routes:
            h.add("Route", route)
        h.add("From", _with_tag(self.local_party or f"<{self.local_uri}>", self.local_tag))
        h.add("To", _with_tag(self.remote_party or f"<{self.remote_uri}>", self.remote_tag))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{seq} {method}")
        if contact:
            h.add("Contact", contact)
        for name, value in extra:
            h.add(name, value)
        return Request(method, uri, h, body)

    def request_target(self) -> tuple[str, list[str]]:
        """RFC 3261 §12.2.1.1: (Request-URI, Route values) for the next request.

        Empty route set: the remote target, no Route. First route loose (has `lr`): the
        remote target, the route set as Route. First route strict: that route's URI as
        Request-URI (without the parameters a Request-URI may not carry), the rest of
        the route set, then the remote target as the last Route.
        """
        if not self.route_set:
            return self.remote_target, []
        first = parse_name_addr(self.route_set[0]).uri
        if "lr" in first.params:
            return self.remote_target, list(self.route_set)
        strict_uri = str(first).split("?", 1)[0]  # §19.1.1 table 1: no headers in a R-URI
        return strict_uri, list(self.route_set[1:]) + [f"<{self.remote_target}>"]

    # ------------------------------------------------------------------ receiving

    def receive_request(self, request: Request) -> int | None:
        """RFC 3261 §12.2.2: check a request received in this dialog; None means go on.

        Returns the status to reject it with: 500 for a CSeq lower than the last one
        (out of order). ACK and CANCEL carry their INVITE's CSeq and are not checked. An
        accepted target refresh updates the remote target (§12.2.2).
        """
        if request.method in ("ACK", "CANCEL"):
            return None
        number = request.cseq[0]
        if self.remote_seq is not None and number < self.remote_seq:
            return OUT_OF_ORDER_STATUS
        self.remote_seq = number
        self.target_refresh(request)
        return None

    def target_refresh(self, msg: Request | Response) -> bool:
        """Take a new remote target from a target refresh request (§12.2.2) or from the
        2xx to one we sent (§12.2.1.2); returns True when the target changed.

        Messages that are not target refreshes, and ones without a usable Contact, leave
        the target alone.
        """
        if isinstance(msg, Request):
            if msg.method not in TARGET_REFRESH_METHODS:
                return False
        else:
            if not 200 <= msg.status < 300 or msg.cseq[1] not in TARGET_REFRESH_METHODS:
                return False
            if msg.cseq[1] == "INVITE":
                self.confirm()
        target = _contact_uri(msg)
        if target is None or target == self.remote_target:
            return False
        self.remote_target = target
        return True


# ---------------------------------------------------------------------- helpers


def dialog_forming(request: Request, status: int, to_tag: str | None) -> bool:
    """Does this response to `request` create a dialog (RFC 3261 §12.1)? A 2xx, or a
    1xx with a To tag (early dialog, §12.1.1), to an INVITE outside a dialog."""
    return request.method == "INVITE" and request.to_tag is None and 100 < status < 300 and bool(to_tag)


def copy_record_route(request: Request, response: Response) -> None:
    """RFC 3261 §12.1.1: a UAS MUST copy every Record-Route of the request into a
    response that creates a dialog, values and parameters untouched and in order, so
    each proxy that record-routed learns the route set too."""
    for name, value in request.headers.items():
        if name == "Record-Route":
            response.headers.add(name, value)


def _contact_uri(msg: Request | Response) -> str | None:
    """The URI of the first Contact, or None when absent, `*` or unparsable."""
    contacts = msg.headers.get_all("Contact")
    if not contacts or contacts[0].strip() == "*":
        return None
    try:
        return str(parse_name_addr(contacts[0]).uri)
    except Exception:  # noqa: BLE001 - a bad Contact must not break the dialog
        return None


def _secure(request: Request) -> bool:
    """RFC 3261 §12.1.1/§12.1.2: TLS and a SIPS Request-URI make the dialog secure."""
    try:
        via = parse_via(request.headers.get_all("Via")[0])
    except Exception:  # noqa: BLE001
        return False
    return request.uri.lower().startswith("sips:") and via.transport.upper() == "TLS"


def _without_tag(na: NameAddr) -> str:
    """A name-addr as header text, without its tag (the dialog holds tags itself)."""
    params = {k: v for k, v in na.params.items() if k.lower() != "tag"}
    return str(NameAddr(na.display, na.uri, params))


def _with_tag(party: str, tag: str) -> str:
    return f"{party};tag={tag}" if tag else party


def _with_branch(via: str | Via) -> str:
    """Our Via as text, with a fresh magic-cookie branch if it lacks one (§8.1.1.7)."""
    text = str(via)
    if not parse_via(text).branch:
        text += f";branch={MAGIC_COOKIE}{secrets.token_hex(8)}"
    return text
