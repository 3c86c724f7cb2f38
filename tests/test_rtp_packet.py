"""RTP header parsing from byte fixtures (RFC 3550 §5.1) and the sequence helpers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtp.packet import RtpPacket, build, rewrite_header
from rtp.sequence import ReorderWindow, Unwrapper, uint16_add, uint16_diff, uint16_gt, uint32_diff

# V=2 P=0 X=0 CC=0, M=0 PT=0, seq 0x1234, ts 0x00000a00, ssrc 0xdeadbeef, 4 payload bytes
PLAIN = bytes.fromhex("80001234" "00000a00" "deadbeef") + b"\xff\xfe\xfd\xfc"
# CC=2 and marker with PT 8
WITH_CSRC = bytes.fromhex("82881234" "00000a00" "deadbeef" "00000001" "00000002") + b"\xd5" * 3
# X=1: profile 0xbede, 1 word of extension data
WITH_EXTENSION = bytes.fromhex("90001234" "00000a00" "deadbeef" "bede0001" "10ff0000") + b"\x7f\x7f"
# P=1: 3 payload bytes then 4 padding bytes, the last one counting them
WITH_PADDING = bytes.fromhex("a0001234" "00000a00" "deadbeef") + b"abc" + b"\x00\x00\x00\x04"


def test_plain_packet() -> None:
    packet = RtpPacket.parse(PLAIN)
    assert packet is not None
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == (0, 0x1234, 0xA00, 0xDEADBEEF)
    assert packet.payload == b"\xff\xfe\xfd\xfc"
    assert not packet.marker and packet.csrc == () and packet.extension is None and packet.padding == 0
    assert packet.serialize() == PLAIN


def test_csrc_and_marker() -> None:
    packet = RtpPacket.parse(WITH_CSRC)
    assert packet is not None
    assert packet.marker and packet.payload_type == 8
    assert packet.csrc == (1, 2)
    assert packet.payload == b"\xd5" * 3
    assert packet.serialize() == WITH_CSRC


def test_extension() -> None:
    packet = RtpPacket.parse(WITH_EXTENSION)
    assert packet is not None
    assert packet.extension == (0xBEDE, bytes.fromhex("10ff0000"))
    assert packet.payload == b"\x7f\x7f"
    assert packet.serialize() == WITH_EXTENSION


def test_padding_is_stripped_from_payload() -> None:
    packet = RtpPacket.parse(WITH_PADDING)
    assert packet is not None
    assert packet.payload == b"abc" and packet.padding == 4
    assert packet.serialize() == WITH_PADDING


def test_version_1_and_0_and_3_are_dropped() -> None:
    for first in (0x40, 0x00, 0xC0):
        assert RtpPacket.parse(bytes([first]) + PLAIN[1:]) is None


def test_truncated_packets_are_dropped() -> None:
    for size in range(12):
        assert RtpPacket.parse(PLAIN[:size]) is None
    assert RtpPacket.parse(WITH_CSRC[:16]) is None  # CSRC list cut short
    assert RtpPacket.parse(WITH_EXTENSION[:14]) is None  # extension header cut short
    assert RtpPacket.parse(WITH_EXTENSION[:18]) is None  # extension data cut short


def test_bad_padding_is_dropped() -> None:
    assert RtpPacket.parse(WITH_PADDING[:-1] + b"\x00") is None  # zero padding count
    assert RtpPacket.parse(WITH_PADDING[:-1] + b"\x40") is None  # more padding than packet


def test_header_only_packet_is_valid() -> None:
    packet = RtpPacket.parse(PLAIN[:12])
    assert packet is not None and packet.payload == b""


def test_rewrite_header_keeps_everything_after_it() -> None:
    out = rewrite_header(WITH_CSRC, 7, 9, 0x01020304)
    packet = RtpPacket.parse(out)
    assert packet is not None
    assert (packet.sequence, packet.timestamp, packet.ssrc) == (7, 9, 0x01020304)
    assert packet.csrc == (1, 2) and packet.marker and packet.payload_type == 8
    assert RtpPacket.parse(rewrite_header(PLAIN, 1, 2, 3, payload_type=8)).payload_type == 8  # type: ignore[union-attr]


def test_build() -> None:
    assert build(0, 0x1234, 0xA00, 0xDEADBEEF, b"\xff\xfe\xfd\xfc") == PLAIN


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_none(data: bytes) -> None:
    packet = RtpPacket.parse(data)
    if packet is not None:
        assert RtpPacket.parse(packet.serialize()) == packet


@given(
    st.integers(0, 127),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=160),
    st.booleans(),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    st.none() | st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])),
    st.integers(0, 255),
)
def test_parse_serialize_round_trip(pt, seq, ts, ssrc, payload, marker, csrc, extension, padding) -> None:  # type: ignore[no-untyped-def]
    packet = RtpPacket(pt, seq, ts, ssrc, payload, marker=marker, csrc=tuple(csrc), extension=extension, padding=padding)
    assert RtpPacket.parse(packet.serialize()) == packet


def test_uint16_arithmetic_wraps() -> None:
    assert uint16_add(0xFFFF, 2) == 1
    assert uint16_diff(1, 0xFFFF) == 2
    assert uint16_diff(0xFFFF, 1) == -2
    assert uint16_gt(0, 0xFFF0) and not uint16_gt(0xFFF0, 0)
    assert uint32_diff(5, 0xFFFFFFFB) == 10


def test_unwrapper_crosses_the_wrap_and_tolerates_reordering() -> None:
    unwrap = Unwrapper(16).unwrap
    assert [unwrap(s) for s in (65534, 65535, 0, 65535, 1)] == [65534, 65535, 65536, 65535, 65537]
    ts = Unwrapper(32).unwrap
    assert ts(0xFFFFFF60) == 0xFFFFFF60 and ts(0x40) == 0x1_0000_0040


def test_reorder_window_filters_duplicates() -> None:
    window = ReorderWindow(8)
    assert [window.accept(s) for s in (65535, 0, 0, 65535, 2, 1, 1)] == [True, True, False, False, True, True, False]
    assert not window.accept(65530)  # older than the window
    assert window.accept(5000)  # a jump past MAX_DROPOUT restarts the window
