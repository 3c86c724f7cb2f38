"""In-band DTMF detection (Goertzel at the eight DTMF frequencies) on decoded audio.

For phones that did not offer telephone-event (RFC 4733) the key presses are tones in
the audio itself. A 20 ms packet (160 samples) is one detection block: the eight
Goertzel powers are one small matrix product (8x160 cosines and sines, precomputed),
so the per-packet cost is a single numpy call, and only for such phones.

Decision rules follow the usual ITU-T Q.24 receiver practice: one row and one column
tone clearly strongest in their groups, both tones well above the rest of the signal,
limited twist, and the same digit in two consecutive blocks (40 ms, Q.24's minimum
tone length) before reporting; a digit is reported once until the tone stops.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 8000
BLOCK = 160  # samples per detection block: one 20 ms G.711 packet
ROW_FREQS = (697.0, 770.0, 852.0, 941.0)  # ITU-T Q.23 low group
COL_FREQS = (1209.0, 1336.0, 1477.0, 1633.0)  # ITU-T Q.23 high group
KEYPAD = ("123A", "456B", "789C", "*0#D")
MIN_BLOCKS = 2  # consecutive blocks (40 ms) a digit must last: ITU-T Q.24 minimum duration
MIN_ENERGY = 160 * 400.0**2  # block energy floor (~ -38 dBm0 per tone): quieter is line noise
MIN_TONE_FRACTION = 0.55  # the two tones' share of block energy: speech spreads wider
MIN_GROUP_RATIO = 4.0  # strongest tone over the next in its group (6 dB), separates adjacent rows
MAX_TWIST = 10.0  # power ratio between row and column tone (10 dB): Q.24 allows 4-8 dB plus margin


def _basis() -> np.ndarray:
    n = np.arange(BLOCK)
    freqs = np.array(ROW_FREQS + COL_FREQS)
    phase = 2 * np.pi * np.outer(freqs, n) / SAMPLE_RATE
    return np.vstack([np.cos(phase), np.sin(phase)])  # 16 x 160


_BASIS = _basis()
_BASIS.flags.writeable = False


def tone_powers(block: np.ndarray) -> np.ndarray:
    """Power at each of the 8 DTMF frequencies (rows then columns) for one block."""
    projection = _BASIS[:, : len(block)] @ block.astype(np.float64)
    return projection[:8] ** 2 + projection[8:] ** 2


def classify(block: np.ndarray) -> str | None:
    """The DTMF digit in one block of int16 samples, or None."""
    samples = block.astype(np.float64)
    energy = float(samples @ samples)
    if energy < MIN_ENERGY:
        return None
    powers = tone_powers(samples)
    rows, cols = powers[:4], powers[4:]
    r = int(rows.argmax())
    c = int(cols.argmax())
    row_power, col_power = rows[r], cols[c]
    if row_power < MIN_GROUP_RATIO * np.partition(rows, 2)[2] or col_power < MIN_GROUP_RATIO * np.partition(cols, 2)[2]:
        return None
    if row_power > MAX_TWIST * col_power or col_power > MAX_TWIST * row_power:
        return None
    # A pure sinusoid of amplitude A over N samples projects to power (A*N/2)^2 and has
    # energy A^2*N/2, so tone energy = 2*power/N.
    if 2.0 * (row_power + col_power) / len(block) < MIN_TONE_FRACTION * energy:
        return None
    return KEYPAD[r][c]


class InbandDetector:
    """Per-stream detector: feed each packet's samples, get each key press once."""

    __slots__ = ("_candidate", "_count", "_reported", "_pending")

    def __init__(self) -> None:
        self._candidate: str | None = None
        self._count = 0
        self._reported = False
        self._pending = np.zeros(0, dtype=np.int16)

    def feed(self, samples: np.ndarray) -> list[str]:
        """Decoded audio in (any length); the digits that started in it, in order."""
        if len(self._pending):
            samples = np.concatenate((self._pending, samples))
        digits: list[str] = []
        whole = len(samples) - len(samples) % BLOCK
        for start in range(0, whole, BLOCK):
            digit = classify(samples[start : start + BLOCK])
            if digit is not None and digit == self._candidate:
                self._count += 1
            else:
                self._candidate = digit
                self._count = 1
                self._reported = False
            if digit is not None and not self._reported and self._count >= MIN_BLOCKS:
                self._reported = True
                digits.append(digit)
        self._pending = samples[whole:]
        return digits
