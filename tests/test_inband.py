"""Goertzel DTMF detection on decoded audio."""

from __future__ import annotations

import numpy as np

from rtp.inband import BLOCK, COL_FREQS, KEYPAD, ROW_FREQS, InbandDetector, classify

RATE = 8000


def tone(digit: str, seconds: float, level: float = 6000.0, twist_db: float = 0.0) -> np.ndarray:
    row = next(i for i, keys in enumerate(KEYPAD) if digit in keys)
    col = KEYPAD[row].index(digit)
    t = np.arange(int(seconds * RATE)) / RATE
    high = level * 10 ** (twist_db / 20)
    signal = level * np.sin(2 * np.pi * ROW_FREQS[row] * t) + high * np.sin(2 * np.pi * COL_FREQS[col] * t + 0.3)
    return signal.astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def packets(samples: np.ndarray) -> list[np.ndarray]:
    return [samples[i : i + BLOCK] for i in range(0, len(samples), BLOCK)]


def detect(samples: np.ndarray) -> list[str]:
    detector = InbandDetector()
    out: list[str] = []
    for packet in packets(samples):
        out += detector.feed(packet)
    return out


def test_every_key_is_recognised() -> None:
    for keys in KEYPAD:
        for digit in keys:
            assert classify(tone(digit, 0.02)) == digit


def test_star_one_as_tones() -> None:
    audio = np.concatenate([silence(0.1), tone("*", 0.1), silence(0.1), tone("1", 0.1), silence(0.1)])
    assert detect(audio) == ["*", "1"]


def test_one_press_reported_once_and_repeats_counted() -> None:
    audio = np.concatenate([tone("5", 0.5), silence(0.06), tone("5", 0.1)])
    assert detect(audio) == ["5", "5"]


def test_too_short_is_ignored() -> None:
    assert detect(np.concatenate([silence(0.04), tone("9", 0.02), silence(0.1)])) == []


def test_twist_within_limits_is_accepted() -> None:
    assert detect(tone("8", 0.1, twist_db=4.0)) == ["8"]


def test_single_tone_speech_and_noise_are_not_digits() -> None:
    t = np.arange(RATE) / RATE
    assert detect((8000 * np.sin(2 * np.pi * 770 * t)).astype(np.int16)) == []
    rng = np.random.default_rng(1)
    assert detect((rng.standard_normal(RATE) * 4000).astype(np.int16)) == []
    # A vowel-like harmonic series at 120 Hz.
    vowel = sum(3000 / k * np.sin(2 * np.pi * 120 * k * t) for k in range(1, 25))
    assert detect(np.asarray(vowel).astype(np.int16)) == []


def test_quiet_tone_is_ignored() -> None:
    assert detect(tone("1", 0.2, level=50.0)) == []


def test_odd_packet_sizes_are_buffered() -> None:
    audio = np.concatenate([silence(0.05), tone("#", 0.12), silence(0.05)])
    detector = InbandDetector()
    out: list[str] = []
    for i in range(0, len(audio), 100):
        out += detector.feed(audio[i : i + 100])
    assert out == ["#"]
