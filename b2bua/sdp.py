"""SDP: a small model for offer/answer through an anchoring B2BUA (RFC 8866, RFC 3264).

We never negotiate codecs ourselves: each side's offer or answer is passed across with
our address and port in place of theirs, so both parties agree directly on the codec
and we only relay. That needs the session and media lines kept in order with their
attributes, and a few rewrites: c=, the audio m= port, o=, a=rtcp, and ICE dropped
(we are the media endpoint; candidates for the far side would bypass us).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from b2bua.call import MediaEndpoint

#: RFC 3551 §6 static payload types we record and relay.
PCMU = 0
PCMA = 8
STATIC_NAMES = {0: "PCMU", 8: "PCMA"}
#: Attributes that describe the sender's own transport; invalid once we anchor media.
DROPPED_ATTRIBUTES = ("candidate", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "end-of-candidates",
                      "remote-candidates", "ice-mismatch", "rtcp-mux")
#: A line of SDP is `x=value` (RFC 8866 §5); anything else makes the body invalid.
MAX_SDP_LINES = 1000


class SdpError(ValueError):
    pass


@dataclass
class Media:
    """One m= section: its line parts and its own lines (c=, b=, a=...) in order."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    lines: list[tuple[str, str]] = field(default_factory=list)  # (type, value)

    def attributes(self, name: str) -> list[str]:
        out = []
        for t, v in self.lines:
            if t == "a":
                key, _, value = v.partition(":")
                if key == name:
                    out.append(value)
        return out

    def has_flag(self, name: str) -> bool:
        return any(t == "a" and v == name for t, v in self.lines)

    def connection(self) -> str | None:
        for t, v in self.lines:
            if t == "c":
                return v
        return None


@dataclass
class SessionDescription:
    session: list[tuple[str, str]]  # lines before the first m=, in order
    media: list[Media]

    @classmethod
    def parse(cls, data: bytes) -> "SessionDescription":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("SDP is not UTF-8") from None
        session: list[tuple[str, str]] = []
        media: list[Media] = []
        lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
        if len(lines) > MAX_SDP_LINES:
            raise SdpError("SDP too long")
        if not lines or not lines[0].startswith("v="):
            raise SdpError("SDP must start with v=")
        for line in lines:
            if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                raise SdpError(f"bad SDP line {line[:30]!r}")
            kind, value = line[0], line[2:].strip()
            if kind == "m":
                parts = value.split()
                if len(parts) < 3:
                    raise SdpError(f"bad m= line {value!r}")
                port_text = parts[1].split("/")[0]
                if not port_text.isdigit() or int(port_text) > 65535:
                    raise SdpError(f"bad m= port {value!r}")
                media.append(Media(parts[0], int(port_text), parts[2], parts[3:]))
            elif media:
                media[-1].lines.append((kind, value))
            else:
                session.append((kind, value))
        return cls(session, media)

    def to_bytes(self) -> bytes:
        out = [f"{t}={v}" for t, v in self.session]
        for m in self.media:
            out.append(f"m={m.kind} {m.port} {m.proto} {' '.join(m.formats)}".rstrip())
            out += [f"{t}={v}" for t, v in m.lines]
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def session_connection(self) -> str | None:
        for t, v in self.session:
            if t == "c":
                return v
        return None

    def first_audio(self) -> Media | None:
        return next((m for m in self.media if m.kind == "audio"), None)


def _address(connection: str | None) -> str | None:
    """`IN IP4 192.0.2.1` → "192.0.2.1" (RFC 8866 §5.7)."""
    if not connection:
        return None
    parts = connection.split()
    if len(parts) != 3:
        return None
    return parts[2].split("/")[0]


def anchor(sdp: SessionDescription, media_ip: str, port: int, *, session_id: int, version: int) -> SessionDescription:
    """The same description with us as the media endpoint of its first audio stream."""
    family = "IP6" if ":" in media_ip else "IP4"
    conn = f"IN {family} {media_ip}"
    session: list[tuple[str, str]] = []
    for t, v in sdp.session:
        if t == "o":
            v = f"b2bua {session_id} {version} IN {family} {media_ip}"
        elif t == "c":
            v = conn
        elif t == "a" and v.split(":", 1)[0] in DROPPED_ATTRIBUTES:
            continue
        session.append((t, v))
    if not any(t == "o" for t, _ in session):
        session.insert(1, ("o", f"b2bua {session_id} {version} IN {family} {media_ip}"))
    media: list[Media] = []
    audio = sdp.first_audio()
    for m in sdp.media:
        if m is not audio:
            # Only the first audio stream is anchored; others are declined (RFC 3264 §6).
            media.append(Media(m.kind, 0, m.proto, m.formats, [(t, v) for t, v in m.lines if t != "a"]))
            continue
        held = m.port == 0
        lines: list[tuple[str, str]] = []
        for t, v in m.lines:
            if t == "c":
                v = conn
            elif t == "a":
                name = v.split(":", 1)[0]
                if name in DROPPED_ATTRIBUTES:
                    continue
                if name == "rtcp":
                    v = f"rtcp:{port + 1}"  # RFC 3605: we relay RTCP on port + 1
            lines.append((t, v))
        media.append(Media(m.kind, 0 if held else port, m.proto, list(m.formats), lines))
    return SessionDescription(session, media)


def audio_endpoint(sdp: SessionDescription, signalling_ip: str) -> MediaEndpoint:
    """What media needs of one party's description of its audio stream."""
    audio = sdp.first_audio()
    if audio is None:
        return MediaEndpoint(None, signalling_ip)
    address = _address(audio.connection() or sdp.session_connection())
    remote = None
    if audio.port != 0 and address and address not in ("0.0.0.0", "::"):
        remote = (address, audio.port)
    rtpmap: dict[int, str] = {}
    for value in audio.attributes("rtpmap"):
        pt_text, _, encoding = value.partition(" ")
        if pt_text.strip().isdigit():
            rtpmap[int(pt_text)] = encoding.split("/")[0].strip().upper()
    payload_type, codec = PCMU, "PCMU"
    for fmt in audio.formats:
        if not fmt.isdigit():
            continue
        pt = int(fmt)
        name = rtpmap.get(pt, STATIC_NAMES.get(pt, ""))
        if name in ("PCMU", "PCMA"):
            payload_type, codec = pt, name
            break
    dtmf = next((pt for pt, name in rtpmap.items() if name == "TELEPHONE-EVENT" and str(pt) in audio.formats), None)
    ptime = 20
    for value in audio.attributes("ptime"):
        try:
            ptime = max(10, min(int(float(value.strip())), 120))
        except ValueError:
            pass
    direction = "sendrecv"
    for flag in ("sendonly", "recvonly", "inactive", "sendrecv"):
        if audio.has_flag(flag) or any(t == "a" and v == flag for t, v in sdp.session):
            direction = flag
            break
    return MediaEndpoint(remote, signalling_ip, payload_type, codec, dtmf, ptime, direction)


def offer(media_ip: str, port: int, *, session_id: int, version: int, payload_types: tuple[int, ...] = (PCMU, PCMA),
          dtmf_payload_type: int | None = 101) -> SessionDescription:
    """Our own offer, for a leg whose peer sent none (late offer, RFC 3261 §13.2.1)."""
    family = "IP6" if ":" in media_ip else "IP4"
    formats = [str(pt) for pt in payload_types]
    lines: list[tuple[str, str]] = [("a", f"rtpmap:{pt} {STATIC_NAMES.get(pt, 'PCMU')}/8000") for pt in payload_types]
    if dtmf_payload_type is not None:
        formats.append(str(dtmf_payload_type))
        lines += [("a", f"rtpmap:{dtmf_payload_type} telephone-event/8000"), ("a", f"fmtp:{dtmf_payload_type} 0-16")]
    lines += [("a", "ptime:20"), ("a", "sendrecv")]
    session = [
        ("v", "0"),
        ("o", f"b2bua {session_id} {version} IN {family} {media_ip}"),
        ("s", "b2bua"),
        ("c", f"IN {family} {media_ip}"),
        ("t", "0 0"),
    ]
    return SessionDescription(session, [Media("audio", port, "RTP/AVP", formats, lines)])
