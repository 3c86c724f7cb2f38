"""Lock out password guessers, per source IP and per user name (sans-IO: the caller passes `now`).

Digest makes each guess cheap for an attacker and each verification cheap for us, so the
defence is to stop answering: after `max_failures` failed attempts within `window`
seconds from one IP, or against one user, further requests from that IP / for that user
get 403 without their credentials being evaluated, for `duration` seconds.

Each lockout writes exactly one line, stable for a fail2ban filter such as
`failregex = security: lockout ip=<HOST> `:

    security: lockout ip=192.0.2.7 user=alice failures=5 until=2024-05-01T12:10:00Z scope=ip
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable

from b2bua.clock import UtcAt, iso_utc, same_clock

#: Failures tolerated inside the window. A phone with a wrong password fails once per
#: registration attempt; 5 in a minute is a script, not a phone.
DEFAULT_MAX_FAILURES = 5
#: Seconds over which failures are counted (sliding window).
DEFAULT_WINDOW = 60.0
#: Seconds a lockout lasts: long enough to make online guessing useless (≤ 5 guesses per
#: 11 minutes), short enough that a mistyped password on a real phone heals by itself.
DEFAULT_DURATION = 600.0
#: Most IPs / users whose failures we track at once. A UDP flood from spoofed sources
#: would otherwise grow the table without bound; the oldest entries are dropped first.
MAX_TRACKED_KEYS = 10_000

_LOGGER = logging.getLogger("b2bua.security")


def _clean(value: str | None) -> str:
    """Keep the log line one line with space-separated fields, whatever a header said."""
    if not value:
        return "-"
    return "".join(c if c.isprintable() and not c.isspace() and c != "=" else "?" for c in value)[:64]


class Lockout:
    """Failure counters and lockouts keyed by ("ip", address) and ("user", name)."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_WINDOW,
        duration: float = DEFAULT_DURATION,
        *,
        log: Callable[[str], None] | None = None,
        max_tracked: int = MAX_TRACKED_KEYS,
        utc_at: UtcAt = same_clock,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.max_failures = max_failures
        self.window = window
        self.duration = duration
        self._log = log if log is not None else _LOGGER.warning
        self._max_tracked = max_tracked
        self._utc_at = utc_at  # `now` is monotonic (durations); the log's until= is UTC
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._locked: dict[tuple[str, str], float] = {}  # key -> locked until

    @staticmethod
    def _keys(ip: str | None, user: str | None) -> list[tuple[str, str]]:
        keys = []
        if ip:
            keys.append(("ip", ip))
        if user:
            keys.append(("user", user))
        return keys

    def is_locked(self, ip: str | None, user: str | None, now: float) -> bool:
        """True while the IP or the user is locked out; expired lockouts are dropped."""
        locked = False
        for key in self._keys(ip, user):
            until = self._locked.get(key)
            if until is None:
                continue
            if now < until:
                locked = True
            else:
                del self._locked[key]
        return locked

    def locked_until(self, ip: str | None, user: str | None, now: float) -> float | None:
        """When the later of the IP's and the user's current lockouts ends, or None."""
        ends = [self._locked[k] for k in self._keys(ip, user) if self._locked.get(k, now) > now]
        return max(ends) if ends else None

    def record_failure(self, ip: str | None, user: str | None, now: float) -> bool:
        """Count one failed attempt; True when it starts a lockout (then one line is logged)."""
        tripped: list[str] = []
        failures = 0
        for key in self._keys(ip, user):
            times = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            self._failures[key] = times  # re-inserted last: most recently active
            if len(times) >= self.max_failures and self._locked.get(key, now) <= now:
                self._locked[key] = now + self.duration
                tripped.append(key[0])
                failures = max(failures, len(times))
                del self._failures[key]  # a fresh count after the lockout ends
        self._trim(now)
        if not tripped:
            return False
        self._log(
            f"security: lockout ip={_clean(ip)} user={_clean(user)} failures={failures} "
            f"until={iso_utc(self._utc_at(now) + self.duration)} scope={'+'.join(tripped)}"
        )
        return True

    def record_success(self, ip: str | None, user: str | None, now: float) -> None:
        """A correct password clears that user's failure count (the failures were most
        likely the owner's own typos). The IP's count is kept: otherwise an attacker with
        one valid account could reset their source's count between guesses at others."""
        if user:
            self._failures.pop(("user", user), None)

    def _trim(self, now: float) -> None:
        """Bound memory cheaply: counters are ordered by last activity, so stale ones are
        at the front; lockouts are only scanned when the table is over its bound."""
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if times and now - times[-1] <= self.window and len(self._failures) <= self._max_tracked:
                break
            del self._failures[key]
        if len(self._locked) > self._max_tracked:
            for key in [k for k, until in self._locked.items() if until <= now]:
                del self._locked[key]
            while len(self._locked) > self._max_tracked:
                # Drop the lockout ending soonest rather than grow without bound.
                del self._locked[min(self._locked, key=self._locked.__getitem__)]
