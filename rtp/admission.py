"""Call admission: how many calls this core can carry, learned from how it is doing.

Why a learned ceiling and not only "refuse while the loop is late": a call's media load
starts at its answer and lasts for minutes, so load shows seconds after the INVITEs that
bring it. Refusing only while the 20 ms tick ran late let calls in whenever the lag dipped
under the threshold; at 50 calls/s the core took three times what it could carry and
every call degraded (bench/soak.py, session 2: 32 of 4,500 calls clean).

So the ceiling moves as TCP's congestion window does (AIMD): when the core is overloaded
(its CPU share past UTIL_HIGH, or the tick late) by its calls, the ceiling drops to just
under the calls it carries at that moment, and follows them down while the overload lasts
(calls ending are what relieve it); while it has headroom and the ceiling is what turns
calls away, the ceiling grows every second, by the headroom it sees.

Only the calls' own load moves the ceiling. The server reports the CPU time it spends on
SIP (`signalling_seconds`); an overload that SIP causes (a registration storm after an
outage, a burst of INVITEs) refuses new calls while it lasts, and no longer: the ceiling
stays where it was. Lowering it then would keep calls out long after the storm (a storm
with 10 calls up would set it to 9, bench/load.py found, and growth at 2% a second takes
minutes to climb back to hundreds).

`[server] max_calls`, when set, is the operator's own limit and replaces the learned
ceiling (the late-tick and overloaded-now refusals still apply): a deployment that has
measured its capacity (bench/load.py) says so. Sans-IO: the media core feeds samples (its
clock, its CPU seconds) in; nothing here reads a clock.
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
INCREASE = 0.02  # least growth per sample, as a share of the ceiling (at least one call)
MAX_INCREASE = 0.10  # most growth per sample: calls x UTIL_HIGH / utilisation, capped at this share
# An overload lowers the ceiling only when the calls (all but SIP) use at least this share of
# the core; below it the overload is signalling's, and refuses calls only while it lasts.
CALLS_SHARE = 0.5
FRESH = 2.5 * SAMPLE_INTERVAL  # an overloaded sample older than this refuses nothing


@dataclass
class Sample:
    """What one interval looked like (also kept for logs and tests)."""

    utilisation: float  # CPU seconds used / wall seconds passed, as a share of `limit`
    lag: float
    calls: int
    signalling: float = 0.0  # the share of utilisation spent on SIP
    limit: float = 1.0  # cores the process may use (its cgroup's CPU quota, at most one)

    @property
    def overloaded(self) -> bool:
        return self.utilisation > UTIL_HIGH or self.lag > LAG_HIGH


@dataclass
class Admission:
    """The ceiling on concurrent calls and the rule that moves it."""

    max_calls: int = 0  # [server] max_calls; 0: no fixed limit, the learned ceiling
    ceiling: float = math.inf
    last: Sample | None = None
    _at: float | None = field(default=None, repr=False)
    _cpu: float = field(default=0.0, repr=False)
    _sip: float = field(default=0.0, repr=False)
    _last_at: float = field(default=-math.inf, repr=False)

    def restart(self, now: float, cpu_seconds: float, signalling_seconds: float = 0.0) -> None:
        """Start a fresh interval (the media clock starts again after an idle spell)."""
        self._at, self._cpu, self._sip = now, cpu_seconds, signalling_seconds

    def due(self, now: float) -> bool:
        return self._at is None or now - self._at >= SAMPLE_INTERVAL

    def sample(self, now: float, cpu_seconds: float, lag: float, calls: int,
               signalling_seconds: float = 0.0, limit: float = 1.0) -> Sample | None:
        """Close the interval that began at the last sample; move the ceiling by it.
        `limit`: the cores this process may use (rtp.cpu_quota); a process held to half a
        core is as loaded at 0.45 as a free one at 0.9, and is measured so."""
        if self._at is None or now <= self._at:
            self.restart(now, cpu_seconds, signalling_seconds)
            return None
        wall = now - self._at
        share = min(max(limit, 0.01), 1.0) * wall
        sample = Sample((cpu_seconds - self._cpu) / share, lag, calls, (signalling_seconds - self._sip) / share,
                        min(limit, 1.0))
        self.restart(now, cpu_seconds, signalling_seconds)
        self.last, self._last_at = sample, now
        if self.max_calls:
            return sample
        if sample.overloaded:
            if sample.lag > LAG_HIGH or sample.utilisation - sample.signalling >= CALLS_SHARE:
                self.ceiling = min(self.ceiling, max(1.0, DECREASE * calls))
        elif sample.utilisation < UTIL_LOW and math.isfinite(self.ceiling) and calls >= self.ceiling - 1:
            # The headroom says how far the ceiling may be from what the core carries; the
            # cap keeps one quiet second (calls answered, their media not yet flowing) from
            # opening the door wide.
            room = calls * UTIL_HIGH / max(sample.utilisation, 1e-3) - self.ceiling
            self.ceiling += min(max(room, INCREASE * self.ceiling, 1.0), max(MAX_INCREASE * self.ceiling, 1.0))
        return sample

    def admit(self, calls: int, lag: float = 0.0, now: float | None = None) -> bool:
        """May one more call start, with `calls` already holding media? `now` (the clock
        samples are taken on) makes a fresh overloaded sample refuse too."""
        if self.max_calls and calls >= self.max_calls:
            return False
        if lag > LAG_HIGH:  # late right now: the next sample would only confirm it
            return False
        if now is not None and self.last is not None and self.last.overloaded and now - self._last_at <= FRESH:
            return False  # overloaded now, whatever the cause: no more work until it passes
        return self.max_calls > 0 or calls < self.ceiling
