"""The two clocks: monotonic for durations, UTC for what people read and what is stored.

Every sans-IO state machine is handed `now` from the loop's monotonic clock: timers,
windows and lockout durations must not jump when NTP steps the wall clock. But a
monotonic reading means nothing to a person (a `Date:` header, a log's `until=`) and
nothing after a reboot (a registration's stored expiry). Those need UTC wall time.

Rather than pass two numbers through every call, the edge (the server) hands the modules
that need UTC a `UtcAt` function: the UTC time of a monotonic instant. It is read only at
the edge; tests give a `FakeClock`, whose two clocks advance together and can be
"rebooted" (monotonic restarts from a small number while UTC carries on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

#: The UTC time (seconds since the epoch) of a monotonic instant, as passed to sans-IO code.
UtcAt = Callable[[float], float]


def same_clock(now: float) -> float:
    """For callers whose `now` already is UTC (tools, older tests): the identity."""
    return now


def system_utc_at(monotonic: Callable[[], float] = time.monotonic) -> UtcAt:
    """`UtcAt` for the running process, given the monotonic clock `now` is read from
    (the event loop's `loop.time`, which need not share `time.monotonic`'s origin)."""

    def utc_at(now: float) -> float:
        return time.time() - (monotonic() - now)

    return utc_at


def iso_utc(t: float) -> str:
    """UTC seconds as `2026-12-06T20:31:00Z`, the form our log lines use."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeClock:
    """A test clock: `now` is monotonic, `utc_at` maps it to a UTC `epoch`-based time."""

    def __init__(self, now: float = 1000.0, utc: float = 1_780_000_000.0) -> None:
        self.now = now
        self._offset = utc - now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def utc_at(self, now: float) -> float:
        return now + self._offset

    def reboot(self, now: float = 5.0) -> None:
        """The machine restarts: monotonic time begins again, UTC time carries on."""
        utc = self.utc_at(self.now)
        self.now = now
        self._offset = utc - now
