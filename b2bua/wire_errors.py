"""Answering a request we could not parse.

RFC 3261 §8.2 wants a 400 with a reason phrase saying what is wrong, and §8.2.6.2 wants
the response to carry the request's Via, From, To, Call-ID and CSeq. A message that
failed to parse may still carry those, so they are picked out leniently, line by line.
A message with no recognisable Via cannot be answered and is dropped (RFC 3261 §18.1.2
notes responses are routed by Via); so is anything that looks like a response.
"""

from __future__ import annotations

from b2bua.peer import Peer

#: Header names (full and compact, RFC 3261 §7.3.3) copied into the error response.
_COPIED = {
    "via": "Via", "v": "Via",
    "from": "From", "f": "From",
    "to": "To", "t": "To",
    "call-id": "Call-ID", "i": "Call-ID",
    "cseq": "CSeq",
}
#: A reason phrase is one line of printable text (RFC 3261 §25.1 Reason-Phrase).
MAX_REASON = 120


def error_response(data: bytes, status: int, reason: str, peer: Peer) -> bytes | None:
    """The bytes of a `status` response to the unparseable request `data`, or None."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    if not lines or lines[0].startswith("SIP/") or " " not in lines[0]:
        return None
    if lines[0].split(" ", 1)[0].upper() == "ACK":
        return None  # never answer an ACK (RFC 3261 §17.2.1)
    copied: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        canonical = _COPIED.get(name.strip().lower())
        if sep and canonical and value.strip():
            copied.append((canonical, value.strip()))
    vias = [v for n, v in copied if n == "Via"]
    if not vias:
        return None
    phrase = "".join(c for c in reason if c.isprintable())[:MAX_REASON] or "Bad Request"
    out = [f"SIP/2.0 {status} {phrase}"]
    out += [f"{n}: {v}" for n, v in copied]
    out += ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("utf-8")
