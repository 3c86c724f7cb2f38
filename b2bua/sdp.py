"""SDP: a small model for offer/answer through an anchoring B2BUA (RFC 8866, RFC 3264).

We never negotiate codecs ourselves: each side's offer or answer is passed across with
our address and port in place of theirs, so both parties agree directly on the codec
and we only relay. That needs the session and media lines kept in order with their
attributes, and a few rewrites: c=, the audio m= port, o=, a=rtcp, and ICE dropped
(we are the media endpoint; candidates for the far side would bypass us).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtp.call import MediaEndpoint

#: RFC 3551 §6 static payload types we record and relay.
PCMU = 0
PCMA = 8
STATIC_NAMES = {0: "PCMU", 8: "PCMA"}
#: Attributes that describe the sender's own transport, invalid once we anchor media:
#: ICE (RFC 8839 §5) would lead the far side to bypass us; rtcp-mux (RFC 5761 §5.1.1)
#: is dropped because we relay RTCP on its own port (RTP port + 1).
DROPPED_ATTRIBUTES = ("candidate", "ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "end-of-candidates",
                      "remote-candidates", "ice-mismatch", "ice-pacing", "rtcp-mux")
#: Lines per description: an audio offer has 10-40, a rich video one a few hundred; a
#: body of thousands is a flood, and the message bound (64 KiB) would allow ~30k.
MAX_SDP_LINES = 1000


class SdpError(ValueError):
    """An SDP body we cannot read; the B2BUA answers 488 Not Acceptable Here (RFC 3261 §21.4.26)."""


@dataclass(slots=True)
class Media:
    """One m= section: its line parts and its own lines (c=, b=, a=...) in order."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    lines: list[tuple[str, str]] = field(default_factory=list)  # (type, value)
    port_count: int | None = None  # `m=audio 49170/2 ...` (RFC 8866 §5.14), rarely sent

    def __post_init__(self) -> None:
        # The model is built by callers too (offers, tests): keep the m= line writable.
        if not 0 <= self.port <= 65535:
            raise SdpError(f"bad m= port {self.port}")

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


@dataclass(slots=True)
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
                port_text, slash, count_text = parts[1].partition("/")
                if not _is_number(port_text) or int(port_text) > 65535 or (slash and not _is_number(count_text)):
                    raise SdpError(f"bad m= port {value!r}")
                count = int(count_text) if slash else None
                media.append(Media(parts[0], int(port_text), parts[2], parts[3:], port_count=count))
            elif media:
                media[-1].lines.append((kind, value))
            else:
                session.append((kind, value))
        return cls(session, media)

    def to_bytes(self) -> bytes:
        out = [f"{t}={v}" for t, v in self.session]
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count is not None else str(m.port)
            out.append(f"m={m.kind} {port} {m.proto} {' '.join(m.formats)}".rstrip())
            out += [f"{t}={v}" for t, v in m.lines]
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def session_connection(self) -> str | None:
        for t, v in self.session:
            if t == "c":
                return v
        return None

    def first_audio(self) -> Media | None:
        return next((m for m in self.media if m.kind == "audio"), None)


def _is_number(text: str) -> bool:
    """ASCII digits only (RFC 8866 §9 integer); str.isdigit() would let '²' reach int()."""
    return text.isascii() and text.isdigit()


def _address(connection: str | None) -> str | None:
    """`IN IP4 192.0.2.1` → "192.0.2.1" (RFC 8866 §5.7; a multicast /ttl suffix is dropped)."""
    if not connection:
        return None
    parts = connection.split()
    if len(parts) != 3:
        return None
    return parts[2].split("/")[0]


def _attribute_name(value: str) -> str:
    """`rtpmap:0 PCMU/8000` → "rtpmap"; `sendrecv` → "sendrecv" (RFC 8866 §5.13)."""
    return value.split(":", 1)[0]


def anchor(sdp: SessionDescription, media_ip: str, port: int, *, session_id: int, version: int) -> SessionDescription:
    """The same offer or answer with us as the media endpoint of its first audio stream.

    What the B2BUA sends to the other leg: the codecs, directions and other attributes
    pass through untouched so the two parties negotiate with each other (RFC 3264 §5,
    §6), while every address and port they would send media to is ours. The input is
    not modified.
    """
    family = "IP6" if ":" in media_ip else "IP4"
    conn = f"IN {family} {media_ip}"
    # RFC 8866 §5.2: o= names the session's creator; towards the other leg, that is us.
    # The caller keeps session_id fixed per leg and bumps version on each change (RFC 3264 §8).
    origin = f"b2bua {session_id} {version} IN {family} {media_ip}"
    session: list[tuple[str, str]] = []
    for t, v in sdp.session:
        if t == "o":
            v = origin
        elif t == "c":
            v = conn
        elif t == "a" and _attribute_name(v) in DROPPED_ATTRIBUTES:
            continue
        session.append((t, v))
    if not any(t == "o" for t, _ in session):
        session.insert(1, ("o", origin))
    has_session_c = any(t == "c" for t, _ in session)
    media: list[Media] = []
    audio = sdp.first_audio()
    for m in sdp.media:
        if m is audio:
            anchored = _anchor_media(m, conn, port, has_session_c)
            if m.port != 0 and _address(m.connection() or sdp.session_connection()) in ("0.0.0.0", "::"):
                # RFC 2543 hold (c= 0.0.0.0, RFC 3264 §8.4): our address replaces it, so say the
                # same with a direction (RFC 3264 §8.4's own way), or the other party never
                # learns it is held and keeps talking into the void (and the recording).
                held = "inactive" if _direction(sdp, m) in ("recvonly", "inactive") else "sendonly"
                anchored.lines = [(t, v) for t, v in anchored.lines if not (t == "a" and v.strip() in DIRECTIONS)]
                anchored.lines.append(("a", held))
            media.append(anchored)
        else:
            # Only the first audio stream is relayed; the others are declined with port 0
            # (RFC 3264 §6, §8.2), their addresses replaced so none of the far side's leaks.
            lines = [(t, conn if t == "c" else v) for t, v in m.lines
                     if not (t == "a" and (_attribute_name(v) in DROPPED_ATTRIBUTES or _attribute_name(v) == "rtcp"))]
            media.append(Media(m.kind, 0, m.proto, list(m.formats), lines))
    return SessionDescription(session, media)


def _anchor_media(m: Media, conn: str, port: int, has_session_c: bool) -> Media:
    """The audio m= section with our c=, port and RTCP port; a disabled stream stays port 0."""
    held = m.port == 0  # port 0 is a stream turned off (RFC 3264 §8.2), not ours to revive
    lines: list[tuple[str, str]] = []
    for t, v in m.lines:
        if t == "c":
            v = conn
        elif t == "a":
            name = _attribute_name(v)
            if name in DROPPED_ATTRIBUTES:
                continue
            if name == "rtcp":
                if held:
                    continue
                v = f"rtcp:{port + 1}"  # RFC 3605 §2.1: we relay RTCP on the odd port above RTP
        lines.append((t, v))
    if not has_session_c and not any(t == "c" for t, _ in lines):
        lines.insert(0, ("c", conn))  # RFC 8866 §5.7: c= at session level or in every m=
    return Media(m.kind, 0 if held else port, m.proto, list(m.formats), lines, m.port_count if held else None)


#: Direction attributes (RFC 8866 §6.7 / RFC 3264 §5.1); absent means sendrecv.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: RFC 3264 §5.1 / RFC 3551 §4.2: 20 ms is the default packetisation; ptime outside
#: these bounds is not something a G.711 phone sends, so it is clamped.
DEFAULT_PTIME = 20
MIN_PTIME, MAX_PTIME = 10, 120


def audio_endpoint(sdp: SessionDescription, signalling_ip: str,
                   known: tuple[str, ...] = ("PCMU", "PCMA")) -> MediaEndpoint:
    """What media needs of one party's description of its first audio stream: its first
    format among the `known` codecs (b2bua/codecs.py passes the ones media handles).

    `remote` is None when the party asks for nothing to be sent to it: c= 0.0.0.0 (the
    RFC 2543 hold that RFC 3264 §8.4 still asks us to honour) or port 0 (stream
    disabled). a=inactive keeps the address: direction says whether to send.
    """
    audio = sdp.first_audio()
    if audio is None:
        return MediaEndpoint(None, signalling_ip)
    address = _address(audio.connection() or sdp.session_connection())
    remote = None
    if audio.port != 0 and address and address not in ("0.0.0.0", "::"):
        remote = (address, audio.port)
    rtpmap: dict[int, tuple[str, str]] = {}  # pt -> (ENCODING, clock rate)
    for value in audio.attributes("rtpmap"):
        pt_text, _, encoding = value.strip().partition(" ")
        if _is_number(pt_text):
            name, _, rest = encoding.strip().partition("/")
            rtpmap[int(pt_text)] = (name.upper(), rest.split("/")[0])
    # The first known format in the party's preference order (RFC 3264 §6.1: m= order).
    payload_type, codec = PCMU, "PCMU"
    for fmt in audio.formats:
        if not _is_number(fmt):
            continue
        pt = int(fmt)
        name = rtpmap.get(pt, (STATIC_NAMES.get(pt, ""), "8000"))[0]
        if name in known:
            payload_type, codec = pt, name
            break
    return MediaEndpoint(
        remote, signalling_ip, payload_type, codec, _telephone_event(audio, rtpmap), _ptime(audio), _direction(sdp, audio)
    )


def _telephone_event(audio: Media, rtpmap: dict[int, tuple[str, str]]) -> int | None:
    """The RFC 4733 payload type offered in m=; at 8000 Hz when there is a choice, since
    events must use the clock rate of the audio they accompany (RFC 4733 §2.1), G.711's."""
    offered = [pt for pt, (name, _) in rtpmap.items() if name == "TELEPHONE-EVENT" and str(pt) in audio.formats]
    at_8k = [pt for pt in offered if rtpmap[pt][1] == "8000"]
    return (at_8k or offered or [None])[0]


def _ptime(audio: Media) -> int:
    """a=ptime in ms (RFC 8866 §6.4), default 20, clamped to what G.711 phones use."""
    for value in audio.attributes("ptime"):
        try:
            return max(MIN_PTIME, min(int(float(value.strip())), MAX_PTIME))
        except (ValueError, OverflowError):  # 'abc', 'nan', 'inf'
            continue
    return DEFAULT_PTIME


def _direction(sdp: SessionDescription, audio: Media) -> str:
    """Media-level direction overrides session-level (RFC 8866 §6.7); default sendrecv."""
    for lines in (audio.lines, sdp.session):
        for t, v in lines:
            if t == "a" and v.strip() in DIRECTIONS:
                return v.strip()
    return "sendrecv"


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


@dataclass(frozen=True)
class Format:
    """One payload format of an m= line: its type, encoding name (upper case), clock rate
    and fmtp parameters (RFC 8866 §6.6, §6.15; static types per RFC 3551 §6)."""

    payload_type: int
    name: str
    clock_rate: int
    fmtp: str | None = None


def formats(audio: Media) -> list[Format]:
    """The m= line's formats in the party's preference order (RFC 3264 §5.1), with their
    rtpmap (or the RFC 3551 static meaning) and fmtp. Formats we cannot name are listed
    with an empty name, so a caller can tell "offered" from "understood"."""
    rtpmap: dict[int, tuple[str, int]] = {}
    for value in audio.attributes("rtpmap"):
        pt_text, _, encoding = value.strip().partition(" ")
        name, _, rest = encoding.strip().partition("/")
        rate = rest.split("/")[0]
        if _is_number(pt_text) and _is_number(rate):
            rtpmap[int(pt_text)] = (name.upper(), int(rate))
    fmtp: dict[int, str] = {}
    for value in audio.attributes("fmtp"):
        pt_text, _, params = value.strip().partition(" ")
        if _is_number(pt_text):
            fmtp[int(pt_text)] = params.strip()
    out = []
    for fmt in audio.formats:
        if not _is_number(fmt) or int(fmt) > 127:
            continue
        pt = int(fmt)
        name, rate = rtpmap.get(pt, (STATIC_NAMES.get(pt, ""), 8000))
        out.append(Format(pt, name, rate, fmtp.get(pt)))
    return out


def with_formats(sdp: SessionDescription, chosen: list[Format]) -> SessionDescription:
    """The description with its first audio stream's formats replaced by `chosen`: the m=
    line, and the rtpmap and fmtp lines (RFC 8866 §6.6, §6.15), written where the first
    rtpmap stood; every other line (direction, ptime, rtcp...) kept in place. A stream
    turned off (port 0) is left as it is. The input is not modified."""
    audio = sdp.first_audio()
    if audio is None or audio.port == 0:
        return sdp
    kept: list[tuple[str, str]] = []
    at = None
    for t, v in audio.lines:
        if t == "a" and _attribute_name(v) in ("rtpmap", "fmtp"):
            if at is None:
                at = len(kept)
            continue
        kept.append((t, v))
    if at is None:  # no rtpmap before: after the c= and b= lines that lead a media section
        at = next((i for i, (t, _) in enumerate(kept) if t not in ("c", "b", "i", "k")), len(kept))
    maps: list[tuple[str, str]] = []
    for f in chosen:
        maps.append(("a", f"rtpmap:{f.payload_type} {_encoding_name(f.name)}/{f.clock_rate}"))
        if f.fmtp:
            maps.append(("a", f"fmtp:{f.payload_type} {f.fmtp}"))
    new = Media(audio.kind, audio.port, audio.proto, [str(f.payload_type) for f in chosen],
                kept[:at] + maps + kept[at:], audio.port_count)
    return SessionDescription(list(sdp.session), [new if m is audio else m for m in sdp.media])


def _encoding_name(name: str) -> str:
    """As phones write it: telephone-event in lower case (RFC 4733 §7.1.1), codecs upper."""
    return "telephone-event" if name == "TELEPHONE-EVENT" else name
