"""RTP packet trains for the end-to-end tests, and pcap files of them for SIPp.

SIPp's ``<exec play_pcap_audio="FILE"/>`` replays the UDP payloads of a pcap
file towards the media address of the remote SDP, paced by the pcap
timestamps.  This module builds such files from a simple description: PCMU
sine tones (or silence) of given frequencies and durations, and RFC 4733
telephone-event trains for digits inserted at given times, all in one RTP
stream (one SSRC, one sequence-number space).

The same packet trains are used by :class:`tests.e2e.peers.RtpEndpoint`,
which sends them itself from Python; :func:`build_stream` is the shared
core.

Example::

    from tests.e2e.pcap import Tone, Digit, write_pcap
    write_pcap(tmp_path / "tone.pcap",
               tones=[Tone(440, 3.0)],
               digits=[Digit("*", at=1.0), Digit("1", at=1.5)])
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

SAMPLE_RATE = 8000
"""G.711 sample rate, Hz."""

PTIME_S = 0.020
"""Packetisation interval: 20 ms, the SDP default for PCMU (RFC 3551 §4.5)."""

SAMPLES_PER_PACKET = int(SAMPLE_RATE * PTIME_S)  # 160

PT_PCMU = 0
PT_PCMA = 8
PT_TELEPHONE_EVENT = 101
"""Dynamic payload type the scenarios and peers use for RFC 4733 events."""

DEFAULT_AMPLITUDE = 0.5
"""Tone amplitude relative to full scale: loud but far from clipping."""

DTMF_EVENT_CODES = {str(d): d for d in range(10)} | {"*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}
"""RFC 4733 §3.2 event codes for the DTMF digits."""

DIGIT_DURATION_S = 0.100
"""How long each digit is held: 100 ms, as most phones send."""

DIGIT_END_REPEATS = 3
"""The end packet is sent three times (RFC 4733 §2.5.1.4)."""

DIGIT_VOLUME = 10
"""Power level field, -dBm0 (RFC 4733 §2.3.4)."""


# ---------------------------------------------------------------------------
# G.711 µ-law encoding (self-contained: the harness must not depend on the
# code under test).


def _linear_to_ulaw(samples: np.ndarray) -> np.ndarray:
    """Encode int16 samples to G.711 µ-law bytes, bit-exact with CPython's ``audioop.lin2ulaw``."""
    s14 = samples.astype(np.int32) >> 2
    negative = s14 < 0
    mag = np.minimum(np.where(negative, -s14, s14), 8159) + 0x21
    seg = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 5, 0, 7)
    uval = np.where(mag > 0x1FFF, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return (uval ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


def _build_ulaw_decode_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int16)
    for i in range(256):
        u = ~i & 0xFF
        sign = u & 0x80
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        mag = ((mantissa << 3) + 0x84) << exponent
        mag -= 0x84
        table[i] = -mag if sign else mag
    return table


ULAW_DECODE = _build_ulaw_decode_table()
"""256-entry table: µ-law byte -> int16 sample."""


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 (or float in [-1, 1]) samples -> PCMU payload bytes."""
    samples = np.asarray(samples)
    if samples.dtype.kind == "f":
        samples = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    return _linear_to_ulaw(samples).tobytes()


def ulaw_decode(payload: bytes) -> np.ndarray:
    """PCMU payload bytes -> int16 samples."""
    return ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


# G.711 A-law, as ITU-T G.711 and the Sun reference (g711.c linear2alaw/alaw2linear) do it.

_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 (or float in [-1, 1]) samples -> PCMA payload bytes."""
    samples = np.asarray(samples)
    if samples.dtype.kind == "f":
        samples = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    x = samples.astype(np.int32) >> 3
    negative = x < 0
    mag = np.where(negative, -x - 1, x)
    seg = np.searchsorted(_ALAW_SEGMENT_ENDS, mag, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F))
    return (aval ^ np.where(negative, 0x55, 0xD5)).astype(np.uint8).tobytes()


def _build_alaw_decode_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.int16)
    for i in range(256):
        a = i ^ 0x55
        t = (a & 0x0F) << 4
        seg = (a & 0x70) >> 4
        t = t + 8 if seg == 0 else (t + 0x108) << max(seg - 1, 0)
        table[i] = t if a & 0x80 else -t
    return table


ALAW_DECODE = _build_alaw_decode_table()
"""256-entry table: A-law byte -> int16 sample."""


def alaw_decode(payload: bytes) -> np.ndarray:
    """PCMA payload bytes -> int16 samples."""
    return ALAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


ENCODERS = {PT_PCMU: ulaw_encode, PT_PCMA: alaw_encode}
DECODERS = {PT_PCMU: ulaw_decode, PT_PCMA: alaw_decode}
"""G.711 by static payload type (RFC 3551 §6)."""


# ---------------------------------------------------------------------------
# Stream description.


@dataclass(frozen=True)
class Tone:
    """A segment of audio: a sine at ``freq`` Hz for ``duration`` seconds; freq 0 is silence."""

    freq: float
    duration: float
    amplitude: float = DEFAULT_AMPLITUDE


@dataclass(frozen=True)
class Digit:
    """An RFC 4733 DTMF event for ``digit``, starting ``at`` seconds into the stream."""

    digit: str
    at: float
    duration: float = DIGIT_DURATION_S


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet of a train: its send time offset (s) and its bytes."""

    t: float
    data: bytes

    @property
    def payload_type(self) -> int:
        return self.data[1] & 0x7F

    @property
    def marker(self) -> bool:
        return bool(self.data[1] & 0x80)

    @property
    def payload(self) -> bytes:
        return self.data[12:]


def rtp_header(pt: int, seq: int, ts: int, ssrc: int, marker: bool = False) -> bytes:
    """A 12-byte RTP header (RFC 3550 §5.1), version 2, no CSRC."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def tone_samples(tones: Sequence[Tone]) -> np.ndarray:
    """The int16 samples of a list of tone segments, concatenated, phase-continuous per segment."""
    parts = []
    for tone in tones:
        n = int(round(tone.duration * SAMPLE_RATE))
        t = np.arange(n) / SAMPLE_RATE
        if tone.freq:
            x = tone.amplitude * np.sin(2 * math.pi * tone.freq * t)
        else:
            x = np.zeros(n)
        parts.append(np.round(x * 32767).astype(np.int16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def build_stream(
    tones: Sequence[Tone] = (Tone(440, 3.0),),
    digits: Iterable[Digit] = (),
    *,
    ssrc: int = 0x12345678,
    seq0: int = 1000,
    ts0: int = 160000,
    pt_event: int = PT_TELEPHONE_EVENT,
    payload_type: int = PT_PCMU,
) -> list[RtpPacket]:
    """One RTP stream: G.711 audio from ``tones`` (``payload_type`` PT_PCMU or PT_PCMA), and
    RFC 4733 digits overlaid at their times.

    While a digit is active (from ``Digit.at`` for ``Digit.duration``), the audio
    packets of that span are replaced by telephone-event packets, as a phone does:
    the first with the marker bit, one every 20 ms with growing duration, then
    three end packets; all share the RTP timestamp of the event's start.  Audio
    resumes after the digit with timestamps that account for the elapsed time.
    Packets are returned in send order with their time offsets.
    """
    samples = tone_samples(tones)
    n_packets = math.ceil(len(samples) / SAMPLES_PER_PACKET)
    # Which packet slots each digit occupies.
    digit_at_slot: dict[int, tuple[Digit, int]] = {}
    for d in digits:
        if d.digit.upper() not in DTMF_EVENT_CODES:
            raise ValueError(f"not a DTMF digit: {d.digit!r}")
        first = int(round(d.at / PTIME_S))
        count = max(1, int(round(d.duration / PTIME_S)))
        for k in range(count):
            digit_at_slot[first + k] = (d, k)
        n_packets = max(n_packets, first + count + 1)
    packets: list[RtpPacket] = []
    seq = seq0
    pad = np.zeros(n_packets * SAMPLES_PER_PACKET - len(samples), dtype=np.int16)
    samples = np.concatenate([samples, pad])
    for slot in range(n_packets):
        t = slot * PTIME_S
        ts = ts0 + slot * SAMPLES_PER_PACKET
        if slot in digit_at_slot:
            d, k = digit_at_slot[slot]
            start_slot = int(round(d.at / PTIME_S))
            ev_ts = ts0 + start_slot * SAMPLES_PER_PACKET
            count = max(1, int(round(d.duration / PTIME_S)))
            code = DTMF_EVENT_CODES[d.digit.upper()]
            duration = (k + 1) * SAMPLES_PER_PACKET
            last = k == count - 1
            repeats = DIGIT_END_REPEATS if last else 1
            for r in range(repeats):
                flags = (0x80 if last else 0) | DIGIT_VOLUME
                payload = struct.pack("!BBH", code, flags, duration)
                packets.append(RtpPacket(t + r * 0.001, rtp_header(pt_event, seq, ev_ts, ssrc, marker=(k == 0 and r == 0)) + payload))
                seq += 1
            continue
        chunk = samples[slot * SAMPLES_PER_PACKET : (slot + 1) * SAMPLES_PER_PACKET]
        audio = ENCODERS[payload_type](chunk)
        packets.append(RtpPacket(t, rtp_header(payload_type, seq, ts, ssrc, marker=(slot == 0)) + audio))
        seq += 1
    return packets


# ---------------------------------------------------------------------------
# pcap writing.

_PCAP_GLOBAL_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(payload: bytes, src_port: int, dst_port: int, ident: int) -> bytes:
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, 17, 0,
                               bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])))
    ip[10:12] = struct.pack("!H", _ipv4_checksum(bytes(ip)))
    eth = b"\x00" * 12 + b"\x08\x00"
    return eth + bytes(ip) + udp


def write_packets_pcap(path: str | Path, packets: Sequence[RtpPacket], src_port: int = 6000, dst_port: int = 6002) -> Path:
    """Write RTP packets to a classic (libpcap) Ethernet/IPv4/UDP capture.

    SIPp rewrites addresses and ports when replaying, so the ones written here
    don't matter; only the payloads and the relative timestamps do.
    """
    path = Path(path)
    base = 1_700_000_000.0
    with path.open("wb") as f:
        f.write(_PCAP_GLOBAL_HEADER)
        for i, p in enumerate(packets):
            frame = _frame(p.data, src_port, dst_port, i)
            ts = base + p.t
            sec = int(ts)
            usec = int(round((ts - sec) * 1e6))
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)
    return path


def write_pcap(
    path: str | Path,
    tones: Sequence[Tone] = (Tone(440, 3.0),),
    digits: Iterable[Digit] = (),
) -> Path:
    """Write a pcap for SIPp's ``play_pcap_audio``: PCMU ``tones`` with RFC 4733 ``digits`` (PT 101).

    Returns the path.  The stream's length is the sum of the tone durations
    (extended if a digit ends later).
    """
    return write_packets_pcap(path, build_stream(tones, digits))


def read_pcap_rtp(path: str | Path) -> list[RtpPacket]:
    """Read back the UDP payloads of an Ethernet/IPv4 pcap (for tests of this module)."""
    data = Path(path).read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    if magic != 0xA1B2C3D4:
        raise ValueError("only little-endian microsecond pcap is supported")
    off = 24
    out = []
    t0 = None
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack("<IIII", data[off : off + 16])
        off += 16
        frame = data[off : off + incl]
        off += incl
        t = sec + usec / 1e6
        t0 = t if t0 is None else t0
        ihl = (frame[14] & 0x0F) * 4
        udp = frame[14 + ihl :]
        out.append(RtpPacket(t - t0, udp[8:]))
    return out
