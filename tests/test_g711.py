"""G.711 tables against known ITU-T/reference values and round-trip properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp import g711

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


@pytest.mark.parametrize(
    ("code", "value"),
    [(0x00, -32124), (0x80, 32124), (0xFF, 0), (0x7F, 0), (0xFE, 8), (0x7E, -8), (0xEF, 132)],
)
def test_ulaw_known_values(code: int, value: int) -> None:
    assert g711.decode_ulaw(bytes([code]))[0] == value


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0xC5, 264)],
)
def test_alaw_known_values(code: int, value: int) -> None:
    assert g711.decode_alaw(bytes([code]))[0] == value


def test_silence_encodes_to_the_idle_codes() -> None:
    zero = np.zeros(3, dtype=np.int16)
    assert g711.encode_ulaw(zero) == b"\xff\xff\xff"
    assert g711.encode_alaw(zero) == b"\xd5\xd5\xd5"


def test_extremes_clip_to_the_largest_codes() -> None:
    extremes = np.array([32767, -32768], dtype=np.int16)
    assert g711.encode_ulaw(extremes) == b"\x80\x00"
    assert g711.encode_alaw(extremes) == b"\xaa\x2a"


def test_ulaw_round_trip_every_code_but_negative_zero() -> None:
    back = g711.encode_ulaw(g711.decode_ulaw(ALL_CODES))
    differs = [c for c in range(256) if back[c] != c]
    assert differs == [0x7F]  # -0 decodes to 0, which encodes as +0 (0xFF)
    assert back[0x7F] == 0xFF


def test_alaw_round_trip_every_code() -> None:
    assert g711.encode_alaw(g711.decode_alaw(ALL_CODES)) == ALL_CODES


def test_decode_tables_are_symmetric_and_monotonic() -> None:
    ulaw = g711.decode_ulaw(ALL_CODES).astype(np.int32)
    alaw = g711.decode_alaw(ALL_CODES).astype(np.int32)
    assert np.array_equal(ulaw[:128], -ulaw[128:])
    assert np.array_equal(alaw[:128], -alaw[128:])
    # µ-law codes 0x80..0xFF run from the largest positive value down to zero.
    assert np.all(np.diff(ulaw[128:]) < 0)


def test_matches_the_reference_implementation_bit_for_bit() -> None:
    audioop = pytest.importorskip("audioop")  # CPython <= 3.12: the Sun g711.c reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert g711.decode_ulaw(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
        assert g711.decode_alaw(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)
        assert g711.encode_ulaw(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)
        assert g711.encode_alaw(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)


def test_encoding_is_monotonic() -> None:
    """A larger sample never decodes smaller: the quantiser preserves order."""
    for enc, dec in ((g711.encode_ulaw, g711.decode_ulaw), (g711.encode_alaw, g711.decode_alaw)):
        again = dec(enc(ALL_SAMPLES)).astype(np.int32)
        assert np.all(np.diff(again) >= 0)


def test_quantisation_error_is_bounded() -> None:
    """Within half the largest step (512, +3 for µ-law's 14-bit truncation) or the clip."""
    x = ALL_SAMPLES.astype(np.int32)
    for pt in (g711.PCMU, g711.PCMA):
        y = g711.decode(g711.encode(ALL_SAMPLES, pt), pt).astype(np.int32)
        inside = np.abs(x) <= 32124
        assert np.abs(y - x)[inside].max() <= 512 + 3
        assert np.abs(y - x).max() <= 32768 - 32124  # µ-law's largest magnitude is 32124


@given(st.binary(max_size=320))
def test_payload_round_trip(payload: bytes) -> None:
    assert g711.encode(g711.decode(payload, 8), 8) == payload
    expected = payload.replace(b"\x7f", b"\xff")
    assert g711.encode(g711.decode(payload, 0), 0) == expected


def test_decode_returns_int16_of_same_length() -> None:
    out = g711.decode(b"\x01\x02\x03", g711.PCMU)
    assert out.dtype == np.int16 and out.shape == (3,)


def test_other_payload_types_are_rejected() -> None:
    with pytest.raises(ValueError):
        g711.decode(b"\x00", 18)
    with pytest.raises(ValueError):
        g711.encode(np.zeros(1, np.int16), 9)


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        g711.ULAW_DECODE[0] = 1


@pytest.mark.parametrize("payload_type", [g711.PCMU, g711.PCMA])
def test_decode_codes_matches_one_code_at_a_time(payload_type: int) -> None:
    """The pair table gives what the 256-entry table gives, for every pair of codes, and
    the shapes the recorder passes (rows cut from wider ones, odd lengths) come out flat."""
    table = g711.ULAW_DECODE if payload_type == g711.PCMU else g711.ALAW_DECODE
    every_pair = np.arange(65536, dtype=np.uint16).view(np.uint8)
    assert np.array_equal(g711.decode_codes(every_pair, payload_type), table[every_pair])
    rng = np.random.default_rng(7)
    wide = rng.integers(0, 256, (5, 240), dtype=np.uint8)
    for cut in (160, 80, 161, 1):
        rows = wide[:, :cut]
        assert np.array_equal(g711.decode_codes(rows, payload_type), table[rows].reshape(-1))
    odd = wide[0, 1:8]  # odd length, starting one byte in
    assert np.array_equal(g711.decode_codes(odd, payload_type), table[odd])
    assert g711.decode_codes(np.zeros(0, np.uint8), payload_type).shape == (0,)


def test_decode_codes_refuses_other_payload_types() -> None:
    with pytest.raises(ValueError, match="not a G.711 payload type"):
        g711.decode_codes(np.zeros(4, np.uint8), 18)
