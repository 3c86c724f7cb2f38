"""RTP fixed header, parsed and serialized (RFC 3550 §5.1).

Why a small class and not a dict: the relay touches a handful of fields per packet and
rewrites three of them (SSRC, sequence number, timestamp) on the way out, so the parse
is one `struct.unpack_from` plus bounds checks, and forwarding re-packs only the first
12 bytes and keeps everything after them (CSRC list, extension, payload, padding) as
the sender wrote it.

Bad packets are counted drops, never exceptions (style.md §4): `RtpPacket.parse`
returns None for anything that is not a well-formed version-2 RTP packet.
"""

from __future__ import annotations

import struct

RTP_VERSION = 2  # RFC 3550 §5.1: the only version in use; version 1 (vat) packets are dropped
HEADER_SIZE = 12  # RFC 3550 §5.1: fixed header before any CSRC identifiers
MAX_PACKET_SIZE = 1500  # one Ethernet MTU: G.711 20 ms is 172 bytes, more is not audio for us

_HEADER = struct.Struct("!BBHII")
_EXTENSION = struct.Struct("!HH")


class RtpPacket:
    """One RTP packet: header fields plus payload (RFC 3550 §5.1)."""

    __slots__ = (
        "payload_type",
        "sequence",
        "timestamp",
        "ssrc",
        "payload",
        "marker",
        "csrc",
        "extension",
        "padding",
    )

    def __init__(
        self,
        payload_type: int,
        sequence: int,
        timestamp: int,
        ssrc: int,
        payload: bytes = b"",
        *,
        marker: bool = False,
        csrc: tuple[int, ...] = (),
        extension: tuple[int, bytes] | None = None,
        padding: int = 0,
    ) -> None:
        self.payload_type = payload_type
        self.sequence = sequence
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload
        self.marker = marker
        self.csrc = csrc
        # RFC 3550 §5.3.1: (16-bit profile-defined value, extension data, a multiple of 4 bytes)
        self.extension = extension
        # RFC 3550 §5.1 P bit: count of padding octets at the end, the count octet included
        self.padding = padding

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket | None:
        """Parse one datagram; None when it is not a well-formed RTP v2 packet."""
        size = len(data)
        if size < HEADER_SIZE or size > MAX_PACKET_SIZE:
            return None
        b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            return None
        offset = HEADER_SIZE + 4 * (b0 & 0x0F)  # CC: number of CSRC identifiers (§5.1)
        if offset > size:
            return None
        csrc: tuple[int, ...] = ()
        if b0 & 0x0F:
            csrc = struct.unpack_from(f"!{b0 & 0x0F}I", data, HEADER_SIZE)
        extension = None
        if b0 & 0x10:  # X: one header extension follows the CSRC list (§5.3.1)
            if offset + 4 > size:
                return None
            profile, words = _EXTENSION.unpack_from(data, offset)
            start = offset + 4
            offset = start + 4 * words
            if offset > size:
                return None
            extension = (profile, bytes(data[start:offset]))
        end = size
        padding = 0
        if b0 & 0x20:  # P: the last octet counts the padding octets, itself included (§5.1)
            padding = data[-1]
            if padding == 0 or offset + padding > size:
                return None
            end = size - padding
        return cls(
            b1 & 0x7F,
            sequence,
            timestamp,
            ssrc,
            bytes(data[offset:end]),
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension=extension,
            padding=padding,
        )

    def serialize(self) -> bytes:
        """The packet's wire form; `parse(p.serialize())` gives back an equal packet."""
        b0 = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        b1 = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        parts = [_HEADER.pack(b0, b1, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc)]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise ValueError("RTP header extension data must be a multiple of 4 bytes")
            parts.append(_EXTENSION.pack(profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RtpPacket):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        return (
            f"RtpPacket(pt={self.payload_type}, seq={self.sequence}, ts={self.timestamp}, "
            f"ssrc={self.ssrc:#010x}, marker={self.marker}, payload={len(self.payload)} bytes)"
        )


def rewrite_header(data: bytes, sequence: int, timestamp: int, ssrc: int, payload_type: int | None = None) -> bytes:
    """`data` with a new sequence number, timestamp and SSRC (and optionally payload type).

    The forwarding fast path: the first byte (version, P, X, CC) and everything after
    the fixed header are kept as the sender wrote them, so CSRCs, extensions and
    padding survive the relay untouched. `data` must have passed `RtpPacket.parse`.
    """
    b1 = data[1] if payload_type is None else (data[1] & 0x80) | payload_type
    return _HEADER.pack(data[0], b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + data[HEADER_SIZE:]


def build(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """A plain RTP packet (no CSRC, extension or padding): what the relay itself generates."""
    return (
        _HEADER.pack(
            0x80, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
        )
        + payload
    )
