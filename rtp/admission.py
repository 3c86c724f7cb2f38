"""Call admission: how many calls this core can carry, learned from how it is doing.

Why a learned ceiling and not only "refuse while the loop is late": a call's media load
starts at its answer and lasts for minutes, so load shows seconds after the INVITEs that
bring it. Refusing only while the 20 ms tick ran late let calls in whenever the lag dipped
under the threshold; at 50 calls/s the core took three times what it could carry and
every call degraded (bench/soak.py, session 2: 32 of 4,500 calls clean).

So the ceiling moves as TCP's congestion window does (AIMD): when the core is overloaded
(its CPU share past UTIL_HIGH, or the tick late), the ceiling drops to just under the
calls it carries at that moment, and follows them down while the overload lasts (calls
ending are what relieve it); while it has headroom and the ceiling is what turns calls
away, the ceiling grows a little every second. New calls are admitted below the ceiling
and below `[server] max_calls` when that is set. Sans-IO: the media core feeds samples
(its clock, its CPU seconds) in; nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SAMPLE_INTERVAL = 1.0  # seconds between samples: long enough for a CPU share to mean something
# Share of one core this process may use before new calls are refused. Below 1.0 on purpose:
# the last 10% is what absorbs bursts (a second of SIP retransmissions, a slow disk write)
# without packets waiting in socket buffers (bench/load.py, shared ports: zero loss at 86% of
# a core, first loss at ~90%; per-call ports: zero loss up to ~98%).
UTIL_HIGH = 0.9
UTIL_LOW = 0.8  # below this (and the tick on time) the ceiling may grow
LAG_HIGH = 0.1  # seconds the tick runs late, smoothed, that count as overloaded on their own
DECREASE = 0.95  # ceiling = this x the calls carried when overloaded
INCREASE = 0.02  # growth per sample, as a share of the ceiling (at least one call)


@dataclass
class Sample:
    """What one interval looked like (also kept for logs and tests)."""

    utilisation: float  # CPU seconds used / wall seconds passed
    lag: float
    calls: int

    @property
    def overloaded(self) -> bool:
        return self.utilisation > UTIL_HIGH or self.lag > LAG_HIGH


@dataclass
class Admission:
    """The ceiling on concurrent calls and the rule that moves it."""

    max_calls: int = 0  # [server] max_calls; 0: no fixed limit
    ceiling: float = math.inf
    last: Sample | None = None
    _at: float | None = field(default=None, repr=False)
    _cpu: float = field(default=0.0, repr=False)

    def restart(self, now: float, cpu_seconds: float) -> None:
        """Start a fresh interval (the media clock starts again after an idle spell)."""
        self._at, self._cpu = now, cpu_seconds

    def due(self, now: float) -> bool:
        return self._at is None or now - self._at >= SAMPLE_INTERVAL

    def sample(self, now: float, cpu_seconds: float, lag: float, calls: int) -> Sample | None:
        """Close the interval that began at the last sample; move the ceiling by it."""
        if self._at is None or now <= self._at:
            self.restart(now, cpu_seconds)
            return None
        sample = Sample((cpu_seconds - self._cpu) / (now - self._at), lag, calls)
        self.restart(now, cpu_seconds)
        self.last = sample
        if sample.overloaded:
            self.ceiling = min(self.ceiling, max(1.0, DECREASE * calls))
        elif sample.utilisation < UTIL_LOW and math.isfinite(self.ceiling) and calls >= self.ceiling - 1:
            self.ceiling += max(1.0, INCREASE * self.ceiling)
        return sample

    def admit(self, calls: int, lag: float = 0.0) -> bool:
        """May one more call start, with `calls` already holding media?"""
        if self.max_calls and calls >= self.max_calls:
            return False
        if lag > LAG_HIGH:  # late right now: the next sample would only confirm it
            return False
        return calls < self.ceiling
