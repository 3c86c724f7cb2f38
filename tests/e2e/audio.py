"""WAV analysis for the end-to-end tests (numpy only).

Everything works on float arrays in [-1, 1], one channel at a time:

- :func:`load_wav` reads a WAV (any channel count) as ``(samples[n, ch], rate)``.
- :func:`dominant_frequency` / :func:`dominant_frequencies` find the strongest
  frequency of a signal or of each window of it.
- :func:`rms` / :func:`rms_per_window` measure level; :func:`is_silence` decides
  whether a stretch is silent.
- :func:`segments` summarises a channel as ``[(start_s, end_s, freq_hz_or_0)]``:
  a compact, readable description of "what was heard when", ideal for asserts.
- :func:`make_tone_wav` writes test sources (baresip's ``aufile`` wants 8 kHz mono S16).

Example::

    x, rate = load_wav(path)
    assert has_tone(x[:, 0], rate, 440)
    assert is_silence(x[int(2.0 * rate):int(3.0 * rate), 1])
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile

SILENCE_RMS = 0.01
"""RMS below which a window counts as silence: -40 dBFS. PCMU idle noise and
comfort noise sit far below; the test tones (-6 dBFS) far above."""

DEFAULT_WINDOW_S = 0.1
"""Analysis window: 100 ms resolves 10 Hz and still locates events to a tenth of a second."""

FREQ_TOLERANCE_HZ = 15.0
"""How far a detected peak may be from the expected tone (window resolution + G.711 noise)."""


def load_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV as float64 samples of shape ``(n, channels)`` in [-1, 1], and its rate."""
    data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    return data, rate


def channel(path: str | Path, index: int = 0) -> tuple[np.ndarray, int]:
    """One channel (0-based) of a WAV as a 1-D float array, and the rate."""
    data, rate = load_wav(path)
    return data[:, index], rate


def make_tone_wav(path: str | Path, freq: float, seconds: float, rate: int = 8000, amplitude: float = 0.5) -> Path:
    """Write a mono 16-bit WAV of a sine (``freq`` 0: silence). Returns the path."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = amplitude * np.sin(2 * math.pi * freq * t) if freq else np.zeros(n)
    soundfile.write(str(path), x, rate, subtype="PCM_16")
    return Path(path)


def rms(x: np.ndarray) -> float:
    """Root mean square of a 1-D signal (0.0 for an empty one)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def _windows(x: np.ndarray, rate: int, window_s: float) -> np.ndarray:
    n = max(1, int(round(window_s * rate)))
    count = len(x) // n
    return np.asarray(x[: count * n], dtype=np.float64).reshape(count, n)


def rms_per_window(x: np.ndarray, rate: int, window_s: float = DEFAULT_WINDOW_S) -> np.ndarray:
    """RMS of each consecutive, non-overlapping window (a trailing partial window is dropped)."""
    w = _windows(x, rate, window_s)
    return np.sqrt(np.mean(w * w, axis=1)) if len(w) else np.zeros(0)


def is_silence(x: np.ndarray, threshold: float = SILENCE_RMS) -> bool:
    """True if the whole stretch is below ``threshold`` RMS (an empty stretch is silence)."""
    return rms(x) < threshold


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    """The frequency (Hz) of the strongest spectral peak, DC excluded, with parabolic interpolation.

    Returns 0.0 for silence (RMS below :data:`SILENCE_RMS`) or too short input.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 16 or is_silence(x):
        return 0.0
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        k = k + (0.5 * (a - c) / denom if denom else 0.0)
    return float(k * rate / len(x))


def dominant_frequencies(x: np.ndarray, rate: int, window_s: float = DEFAULT_WINDOW_S) -> np.ndarray:
    """:func:`dominant_frequency` of each non-overlapping window (0.0 where silent)."""
    return np.array([dominant_frequency(w, rate) for w in _windows(x, rate, window_s)])


def has_tone(x: np.ndarray, rate: int, freq: float, min_fraction: float = 0.5,
             tolerance: float = FREQ_TOLERANCE_HZ, window_s: float = DEFAULT_WINDOW_S) -> bool:
    """True if at least ``min_fraction`` of the non-silent windows are dominated by ``freq``."""
    f = dominant_frequencies(x, rate, window_s)
    f = f[f > 0]
    if not len(f):
        return False
    return float(np.mean(np.abs(f - freq) <= tolerance)) >= min_fraction


def tone_duration(x: np.ndarray, rate: int, freq: float, tolerance: float = FREQ_TOLERANCE_HZ,
                  window_s: float = DEFAULT_WINDOW_S) -> float:
    """Seconds of windows dominated by ``freq``."""
    f = dominant_frequencies(x, rate, window_s)
    return float(np.sum(np.abs(f - freq) <= tolerance) * window_s)


def segments(x: np.ndarray, rate: int, window_s: float = DEFAULT_WINDOW_S, quantum_hz: float = 10.0,
             min_len_s: float = 0.0) -> list[tuple[float, float, float]]:
    """Runs of equal dominant frequency: ``[(start_s, end_s, freq)]``, freq 0.0 meaning silence.

    Frequencies are rounded to ``quantum_hz`` so one steady tone forms one run;
    runs shorter than ``min_len_s`` are dropped (they are usually transitions).
    Example result: ``[(0.0, 2.0, 440.0), (2.0, 3.1, 0.0), (3.1, 5.0, 1000.0)]``.
    """
    f = dominant_frequencies(x, rate, window_s)
    q = np.round(f / quantum_hz) * quantum_hz
    out: list[tuple[float, float, float]] = []
    start = 0
    for i in range(1, len(q) + 1):
        if i == len(q) or q[i] != q[start]:
            s, e = start * window_s, i * window_s
            if e - s >= min_len_s - 1e-9:
                out.append((round(s, 3), round(e, 3), float(q[start])))
            start = i
    return out


def first_time_of(x: np.ndarray, rate: int, freq: float, tolerance: float = FREQ_TOLERANCE_HZ,
                  window_s: float = DEFAULT_WINDOW_S) -> float | None:
    """Start time (s) of the first window dominated by ``freq``, or None."""
    f = dominant_frequencies(x, rate, window_s)
    hits = np.nonzero(np.abs(f - freq) <= tolerance)[0]
    return float(hits[0] * window_s) if len(hits) else None


def describe(x: np.ndarray, rate: int, window_s: float = DEFAULT_WINDOW_S) -> str:
    """A one-line human summary for assertion messages, e.g. ``'0.0-2.0s 440Hz | 2.0-3.0s silence'``."""
    parts = []
    for s, e, f in segments(x, rate, window_s):
        parts.append(f"{s:.1f}-{e:.1f}s {'silence' if f == 0 else f'{f:.0f}Hz'}")
    return " | ".join(parts) or "(empty)"


def spans_of(seg: Sequence[tuple[float, float, float]], freq: float, tolerance: float = FREQ_TOLERANCE_HZ) -> float:
    """Total seconds in ``segments()`` output whose frequency is ``freq``."""
    return sum(e - s for s, e, f in seg if abs(f - freq) <= tolerance)
