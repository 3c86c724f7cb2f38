"""SIP messages: parse from bytes, build to bytes (RFC 3261 §7, §18.3, §20).

Our own parser rather than sipmessage 0.7.1, decided on measurement
(`python bench/sip_parser.py`, on tests/fixtures/sip/*.sip): sipmessage is about 3x
faster where it parses at all (median ~28-43k against our ~9-13k messages/s on one
core) and does expand compact forms, but it raises a bare ValueError on a folded
header line (RFC 3261 §7.3.1, legal and sent by carriers) and on LF-only line
endings, accepts a request with no Call-ID, checks no bounds against floods, and
reports no status to answer with. 10k messages/s is far above what signalling needs
(a call is about ten messages), so correctness wins. `SipParseError` is the only
exception parsing raises, and it carries the status to answer with (style: errors
carry what to answer), so the transport replies correctly without knowing why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from b2bua.headers import NameAddr, Via, parse_cseq, parse_name_addr, parse_uri, parse_via, split_quoted

#: RFC 3261 §18.1.1 sets 1300 bytes as the UDP comfort size; carriers send more (long
#: SDP, many Vias). 64 KiB is the UDP datagram bound and our hard limit on any transport.
MAX_MESSAGE_SIZE = 65535
#: Header lines per message: real messages have 10-40; a flood of thousands is an attack.
MAX_HEADERS = 256
#: RFC 3261 §7.3.3 compact forms, plus those of later RFCs (RFC 3265, 3515, 3892, 4028...).
COMPACT = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To",
    "u": "Allow-Events", "v": "Via", "x": "Session-Expires", "y": "Identity",
}
#: Canonical spelling of headers whose capitalisation is not Title-Case.
_CANONICAL = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "mime-version": "MIME-Version",
    "rack": "RAck", "rseq": "RSeq", "sip-etag": "SIP-ETag", "sip-if-match": "SIP-If-Match",
}
#: Headers whose values are comma-separated lists (RFC 3261 §7.3.1); others are never split.
LIST_HEADERS = frozenset({
    "via", "contact", "route", "record-route", "allow", "supported", "require", "proxy-require",
    "unsupported", "accept", "accept-encoding", "accept-language", "allow-events", "content-encoding",
    "in-reply-to", "path", "service-route", "p-asserted-identity", "reason", "security-client",
})
#: RFC 3261 §25.1 token: method names and header names.
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+\Z")
#: Requests must carry these (RFC 3261 §8.1.1); Max-Forwards is tolerated missing (old UAs).
MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")


class SipParseError(Exception):
    """A message we cannot accept, with the response status and reason phrase to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


#: Header names as we write them (RFC 3261 §20 spelling), keyed by their lower-case form.
#: Looked up before computing Title-Case so the common names cost one dict hit; a constant,
#: never grown, so hostile names cannot make it a memory sink (style: no global mutable state).
_KNOWN: Mapping[str, str] = MappingProxyType({
    **{full.lower(): full for full in COMPACT.values()},
    **_CANONICAL,
    **{name.lower(): name for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Authentication-Info",
        "Authorization", "Contact", "Content-Disposition", "Content-Language", "Date", "Error-Info",
        "Expires", "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "Organization", "Path",
        "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Reason", "Record-Route",
        "Reply-To", "Require", "Retry-After", "Route", "Server", "Service-Route", "Timestamp", "Unsupported",
        "User-Agent", "Warning", "P-Asserted-Identity", "P-Preferred-Identity", "Privacy", "Diversion",
        "Remote-Party-ID", "Replaces", "Refer-To", "Referred-By", "Event", "Subscription-State",
    )},
})

#: Exact spellings that need no case folding: the canonical names and the compact letters.
_EXACT: Mapping[str, str] = MappingProxyType({
    **{full: full for full in _KNOWN.values()},
    **COMPACT,
    **{short.upper(): full for short, full in COMPACT.items()},
})


def canonical(name: str) -> str:
    """The one spelling a header name is stored under (RFC 3261 §7.3.1: names are
    case-insensitive; §7.3.3: compact forms mean their full names)."""
    exact = _EXACT.get(name)  # the spelling almost every peer and all our code uses
    if exact is not None:
        return exact
    low = name.strip().lower()
    known = COMPACT.get(low) or _KNOWN.get(low)
    if known is not None:
        return known
    return "-".join(p.capitalize() for p in low.split("-"))


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' and other Unicode digits that
    int() then rejects, which would escape as a ValueError instead of a 400 (RFC 3261 §25.1 DIGIT)."""
    return text.isascii() and text.isdigit()


class Headers:
    """An ordered multi-map of header fields with case-insensitive names."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = [(canonical(n), v) for n, v in (items or [])]

    def get(self, name: str) -> str | None:
        key = canonical(name)
        for n, v in self._items:
            if n == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value, comma lists split for list headers (RFC 3261 §7.3.1); never for
        the credentials headers, whose own parameters are comma-separated (§20.7, §20.44)."""
        key = canonical(name)
        values = [v for n, v in self._items if n == key]
        if key.lower() in LIST_HEADERS:
            return [p.strip() for v in values for p in split_quoted(v, ",") if p.strip()]
        return values

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical(name), value))

    def prepend(self, name: str, value: str) -> None:
        """Add before all others: a proxy's or UAC's own Via goes on top (RFC 3261 §8.1.1.7)."""
        self._items.insert(0, (canonical(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name with one, kept where the first one was."""
        key = canonical(name)
        for i, (n, _) in enumerate(self._items):
            if n == key:
                self._items[i] = (key, value)
                self._items = [it for j, it in enumerate(self._items) if j <= i or it[0] != key]
                return
        self._items.append((key, value))

    def remove(self, name: str) -> None:
        key = canonical(name)
        self._items = [it for it in self._items if it[0] != key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical(name)
        return any(n == key for n, _ in self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> "Headers":
        h = Headers()
        h._items = list(self._items)
        return h

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class _Common:
    """What requests and responses share: the fields transactions and dialogs key on."""

    __slots__ = ()  # Request and Response are slotted: transactions hold thousands for 64*T1

    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self.headers.get("From") or "")

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self.headers.get("To") or "")

    @property
    def from_tag(self) -> str | None:
        try:
            return self.from_.tag
        except ValueError:
            return None

    @property
    def to_tag(self) -> str | None:
        try:
            return self.to.tag
        except ValueError:
            return None

    @property
    def via(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def branch(self) -> str | None:
        vias = self.headers.get_all("Via")
        return parse_via(vias[0]).branch if vias else None

    def _head_and_body(self, start: str) -> bytes:
        lines = [start]
        for name, value in self.headers.items():
            if name != "Content-Length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass(slots=True)
class Request(_Common):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def to_bytes(self) -> bytes:
        return self._head_and_body(f"{self.method} {self.uri} {self.version}")


@dataclass(slots=True)
class Response(_Common):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def to_bytes(self) -> bytes:
        return self._head_and_body(f"{self.version} {self.status} {self.reason}")


#: Reason phrases we use (RFC 3261 §21).
REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | tuple = (),
) -> Response:
    """A response to `request` per RFC 3261 §8.2.6.2."""
    h = Headers()
    for via in request.headers.get_all("Via"):
        h.add("Via", via)
    h.add("From", request.headers.get("From") or "")
    to = request.headers.get("To") or ""
    if to_tag and status != 100 and request.to_tag is None:
        to = f"{to};tag={to_tag}"
    h.add("To", to)
    h.add("Call-ID", request.call_id)
    h.add("CSeq", request.headers.get("CSeq") or "")
    if status == 100 and "Timestamp" in request.headers:
        h.add("Timestamp", request.headers.get("Timestamp") or "")  # RFC 3261 §8.2.6.1
    for name, value in headers:
        h.add(name, value)
    return Response(status, reason or REASONS.get(status, "Unknown"), h)


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Head and body; LF-only line endings accepted leniently (RFC 3261 §7.5 says CRLF)."""
    idx = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if idx >= 0 and (lf < 0 or idx <= lf):
        return data[:idx], data[idx + 4 :]
    if lf >= 0:
        return data[:lf], data[lf + 2 :]
    return data, b""


def parse_message(data: bytes) -> Request | Response:
    """Parse one complete message (a UDP datagram or a framed TCP message)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(513, "Message Too Large")
    data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    if not data:
        raise SipParseError(400, "Empty Message")
    head, body = _split_head(data)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")  # never valid SIP, but name the header below
        if any(ord(c) < 32 and c not in "\t\r\n" for c in text):
            raise SipParseError(400, "Bad Request (binary data)") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    headers = _parse_headers(lines[1:])
    message: Request | Response
    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2 or not _is_number(parts[1]) or len(parts[1]) != 3:
            raise SipParseError(400, "Bad Status Line")
        if parts[0].upper() != "SIP/2.0":
            raise SipParseError(505, "Version Not Supported")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise SipParseError(400, "Bad Status Code")
        message = Response(status, parts[2] if len(parts) > 2 else "", headers)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise SipParseError(400, "Bad Request Line")
        method, uri, version = parts
        if not _TOKEN.match(method):
            raise SipParseError(400, "Bad Request Line (method)")
        if version.upper() != "SIP/2.0":
            if version.upper().startswith("SIP/"):
                raise SipParseError(505, "Version Not Supported")
            raise SipParseError(400, "Bad Request Line (version)")
        if ":" not in uri or uri.startswith("<"):
            raise SipParseError(400, "Bad Request-URI")  # RFC 4475 §3.1.2.7: no <> around it
        scheme = uri.split(":", 1)[0].lower()
        if scheme not in ("sip", "sips", "tel"):
            raise SipParseError(416, "Unsupported URI Scheme")
        if scheme != "tel":
            if "?" in uri[uri.rfind("@") + 1 :]:  # a "?" in the user part is legal (RFC 4475 intmeth)
                raise SipParseError(400, "Bad Request-URI (headers not allowed)")  # RFC 3261 §19.1.5
            try:
                parse_uri(uri)
            except ValueError:
                raise SipParseError(400, "Bad Request-URI") from None
        message = Request(method, uri, headers)
    _check(message)
    message.body = _body(message, body)
    return message


def _parse_headers(lines: list[str]) -> Headers:
    """Header lines to fields, unfolding continuation lines (RFC 3261 §7.3.1) and bounding
    their number (MAX_HEADERS) so a flood costs us no more than a normal message."""
    items: list[tuple[str, str]] = []
    for line in lines:
        if not line.strip():
            continue
        if line[0] in " \t":
            if not items:
                raise SipParseError(400, "Bad Header (continuation without header)")
            name, value = items[-1]
            # RFC 3261 §7.3.1 folding; an empty first line ("To:" then the value folded
            # onto the next, RFC 4475 wsinv) leaves no leading space in the value.
            items[-1] = (name, f"{value} {line.strip()}" if value else line.strip())
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name):
            raise SipParseError(400, f"Bad Header: {line[:40]!r}")
        items.append((name, value.strip()))
        if len(items) > MAX_HEADERS:
            raise SipParseError(400, "Too Many Headers")
    return Headers(items)


#: Headers whose grammar (RFC 3261 §20) allows one value, so a second copy is an error
#: (§7.3.1: only comma-separated lists may be split over several header lines). Which one
#: would a later layer believe? Content-Length is checked apart: equal copies are tolerated.
SINGLE_VALUED = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Type", "Expires", "Min-Expires")


def _check(message: Request | Response) -> None:
    """Refuse, with a 400 naming the header, what later layers could not route or match:
    mandatory headers (RFC 3261 §8.1.1), CSeq (§20.16, its method matching the request's: §8.1.1.5), From/To/Via syntax."""
    headers = message.headers
    required = MANDATORY if isinstance(message, Request) else ("Via", "From", "To", "Call-ID", "CSeq")
    for name in required:
        if not headers.get(name):
            raise SipParseError(400, f"Missing Header: {name}")
    for name in SINGLE_VALUED:  # RFC 3261 §7.3.1, RFC 4475 §3.1.2.19 multi01: once each
        if len(headers.get_all(name)) > 1:
            raise SipParseError(400, f"Bad Header: {name} (more than one)")
    try:
        number, method = parse_cseq(headers.get("CSeq") or "")
    except ValueError:
        raise SipParseError(400, "Bad Header: CSeq") from None
    if isinstance(message, Request) and method != message.method:
        raise SipParseError(400, "Bad Header: CSeq method does not match the request")
    for name in ("From", "To"):
        try:
            parse_name_addr(headers.get(name) or "")
        except ValueError:
            raise SipParseError(400, f"Bad Header: {name}") from None
    try:
        message.via  # every Via must parse: responses are routed by it
    except ValueError:
        raise SipParseError(400, "Bad Header: Via") from None
    try:  # a Contact becomes a binding or a remote target: "*" or a name-addr (§20.10)
        for contact in headers.get_all("Contact"):
            if contact != "*":
                parse_name_addr(contact)
    except ValueError:
        raise SipParseError(400, "Bad Header: Contact") from None
    mf = headers.get("Max-Forwards")
    if mf is not None and (not _is_number(mf) or int(mf) > 255):  # RFC 3261 §20.22: 0-255
        raise SipParseError(400, "Bad Header: Max-Forwards")
    if len(headers.get_all("Content-Length")) > 1 and len(set(headers.get_all("Content-Length"))) > 1:
        raise SipParseError(400, "Bad Header: Content-Length (conflicting values)")


def _body(message: Request | Response, body: bytes) -> bytes:
    """The body as Content-Length bounds it (RFC 3261 §18.3, §20.14)."""
    length = message.headers.get("Content-Length")
    if length is None:
        return body  # UDP without Content-Length: the rest of the datagram (§18.3)
    if not _is_number(length.strip()):
        raise SipParseError(400, "Bad Header: Content-Length")
    n = int(length)
    if n > len(body):
        raise SipParseError(400, "Bad Header: Content-Length (larger than the body)")
    return body[:n]  # extra bytes after the body are discarded (RFC 3261 §18.3)


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (RFC 3261 §18.3).

    CRLF keep-alives between messages (RFC 5626 §3.5.1) are swallowed; `pings` counts
    the double-CRLF pings so the transport can answer each with one CRLF pong. The
    buffer is bounded by `max_size`: a peer that never ends its header block, or
    announces a body beyond the bound, gets 513 rather than our memory.
    A stream message without Content-Length is taken as bodiless (§18.3 makes the
    header mandatory on streams; §20.14 lets a missing one mean zero).
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self.buffer = bytearray()
        self.pings = 0
        self._keepalive_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held (the transport's slowloris clock runs on it)."""
        return len(self.buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every message now complete, in order."""
        self.buffer += data
        out: list[bytes] = []
        while True:
            # CRLFs between messages are keep-alives, never part of a message.
            stripped = len(self.buffer) - len(self.buffer.lstrip(b"\r\n"))
            if stripped:
                # A ping may arrive split across reads: count its bytes until four are seen.
                self._keepalive_bytes += stripped
                self.pings += self._keepalive_bytes // 4
                self._keepalive_bytes %= 4
                del self.buffer[:stripped]
            if not self.buffer:
                break
            self._keepalive_bytes = 0  # a message starts: a lone CRLF before it was a pong
            end, separator = _head_end(self.buffer)
            if end < 0:
                if len(self.buffer) > self.max_size:
                    raise SipParseError(513, "Message Too Large")
                break
            total = end + separator + _content_length(bytes(self.buffer[:end]))
            if total > self.max_size:
                raise SipParseError(513, "Message Too Large")
            if len(self.buffer) < total:
                break
            out.append(bytes(self.buffer[:total]))
            del self.buffer[:total]
        return out


def _head_end(buffer: bytearray) -> tuple[int, int]:
    """Where the header block ends and how long its blank-line separator is (-1 when
    incomplete); CRLF CRLF per RFC 3261 §7, LF LF accepted from lenient stacks."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf >= 0 else (-1, 0)


def _content_length(head: bytes) -> int:
    """The Content-Length (or compact `l`, RFC 3261 §7.3.3) of a header block; 0 when absent."""
    length = 0
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            value = value.strip()
            if not value.isdigit():  # bytes.isdigit() is ASCII only
                raise SipParseError(400, "Bad Header: Content-Length")
            length = int(value)
    return length
