"""Throttle password guessing where it comes from, not where it aims (sans-IO: `now` passed in).

Locking a *user* after a few wrong guesses hands every scanner a way to keep any named user
offline (issue 16: svcrack's five guesses for alice locked her own phone out for 600 s, and
everyone behind the scanner's NAT with her). So the rules are:

- **The guessing source is refused.** After `max_failures` failures within `window` seconds
  from one IP (whatever users it tried), or `per_hour` within an hour, or `per_day` within a
  day (slow guessing), that IP gets 403 without its credentials being evaluated. Each new
  lockout of the same IP within a day lasts twice the last (`duration`, 2x, 4x ... up to
  `max_duration`): a slow guesser that waits out one lockout soon waits a day.
- **A user's known phones are never locked by someone else's guesses.** An address that
  has authenticated as a user (its exact IP and port over UDP, where ports are stable and
  guessers elsewhere on the same NAT use other ports; its IP over TCP/TLS, which cannot be
  spoofed and whose ports change per connection) is *known* for that user for 30 days. A
  request claiming that user from a known address is always evaluated; its own failures
  (a phone with a stale password) count against that address alone, at the same limits.
- **Many sources guessing one user** (each under the per-IP limits) are stopped by a
  per-user count of failures from addresses that are *not* known for the user: past
  `user_per_hour` in an hour, the user accepts only its known addresses for a while (with
  the same backoff). Its phones keep registering; a new phone waits.
- **Logs stay small.** One line per lockout (fail2ban matches `security: lockout ip=<HOST> `),
  a `phone-lockout` or `user-guard` line for the other two cases (not matched: banning an
  office's IP for one phone's stale password, or no IP at all, would be wrong), and refused
  requests are counted into a periodic per-source summary (`hostile_summary.py`), never a
  line each.

All counters live in a `LockoutStore` (`lockout_store.py`), in memory for `b2bua run` and
shared for a cluster, so guesses spread over workers count together. Example lines:

    security: lockout ip=192.0.2.7 user=alice failures=5 window=60s strike=1 until=2026-12-06T21:10:00Z scope=ip
    security: user-guard user=alice failures=30 window=3600s strike=1 until=2026-12-06T21:10:00Z
    security: phone-lockout user=alice address=udp:192.0.2.10:5062 failures=5 until=2026-12-06T21:10:00Z
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from b2bua.clock import UtcAt, iso_utc, same_clock
from b2bua.hostile_summary import HostileSummary
from b2bua.lockout_store import LockoutStore, MemoryLockoutStore
from b2bua.peer import Peer

#: Failures from one IP tolerated inside the short window. A phone with a wrong password
#: fails once per registration attempt; 5 in a minute is a script, not a phone.
DEFAULT_MAX_FAILURES = 5
#: Seconds over which the short count runs (a fixed window opened by the first failure).
DEFAULT_WINDOW = 60.0
#: Failures from one IP tolerated per hour and per day: svcrack at 4 guesses a minute stays
#: under the short limit, and is stopped by the hourly one within 5 minutes.
DEFAULT_PER_HOUR = 20
DEFAULT_PER_DAY = 50
#: Seconds the first lockout of an IP lasts; each further one within a day doubles it.
DEFAULT_DURATION = 600.0
#: The longest a lockout lasts, however often the IP comes back.
DEFAULT_MAX_DURATION = 86_400.0
#: Failures against one user from addresses not known for it, all sources together, per
#: hour: many sources each under the per-IP limits. High enough that a user's own new phone
#: typing a wrong password never reaches it.
DEFAULT_USER_PER_HOUR = 30
#: How long an address stays known for a user after its last successful authentication.
KNOWN_FOR = 30 * 86_400.0
#: Strikes (lockouts that double the next one) are forgotten after this long without one.
STRIKES_FOR = 86_400.0
#: Kept for callers of the old interface; the store bounds memory now (lockout_store.MAX_KEYS).
MAX_TRACKED_KEYS = 10_000

_LOGGER = logging.getLogger("b2bua.security")


def _clean(value: str | None) -> str:
    """Keep log lines and store keys one token, whatever a header said."""
    if not value:
        return "-"
    return "".join(c if c.isprintable() and not c.isspace() and c not in "=|" else "?" for c in value)[:64]


def _address(peer: Peer) -> str:
    """The part of a source address that identifies a phone (see the module docstring)."""
    if peer.transport.lower() == "udp":
        return f"udp|{peer.host}|{peer.port}"
    return f"stream|{peer.host}|*"


class Lockout:
    """Decides which requests are refused unevaluated, from counters kept in a store."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_WINDOW,
        duration: float = DEFAULT_DURATION,
        *,
        per_hour: int = DEFAULT_PER_HOUR,
        per_day: int = DEFAULT_PER_DAY,
        max_duration: float = DEFAULT_MAX_DURATION,
        user_per_hour: int = DEFAULT_USER_PER_HOUR,
        store: LockoutStore | None = None,
        log: Callable[[str], None] | None = None,
        summary: HostileSummary | None = None,
        utc_at: UtcAt = same_clock,
        max_tracked: int | None = None,
    ) -> None:
        for name, value in (("max_failures", max_failures), ("per_hour", per_hour), ("per_day", per_day),
                            ("user_per_hour", user_per_hour)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        for name, seconds in (("window", window), ("duration", duration), ("max_duration", max_duration)):
            if seconds < 0:
                raise ValueError(f"{name} must not be negative")
        self.max_failures = max_failures
        self.window = window
        self.duration = duration
        self.max_duration = max(max_duration, duration)
        self.user_per_hour = user_per_hour
        #: (window seconds, failures tolerated), shortest first: the first one reached locks.
        self.limits: tuple[tuple[float, int], ...] = ((window, max_failures), (3600.0, per_hour), (86_400.0, per_day))
        self.store: LockoutStore = store if store is not None else MemoryLockoutStore(
            **({"max_keys": max_tracked * 10} if max_tracked else {}))
        self._log = log if log is not None else _LOGGER.warning
        self.summary = summary if summary is not None else HostileSummary(log if log is not None else None)
        self._utc_at = utc_at
        #: Lockouts started by this process since start, by scope ("ip", "user", "addr"): /metrics.
        self.started: dict[str, int] = {}

    # -- decisions ------------------------------------------------------------------

    def refused(self, peer: Peer, user: str | None, now: float) -> bool:
        """True when this request (from `peer`, claiming `user`) gets 403 unevaluated.

        Each refusal is counted into the per-source summary, never logged on its own.
        """
        s = self.store
        user = _clean(user) if user else None
        if user and s.get(f"known:{user}|{_address(peer)}", now):
            locked = bool(s.get(f"lock:addr:{user}|{_address(peer)}", now))
        else:
            locked = bool(s.get(f"lock:ip:{peer.host}", now)) or bool(user and s.get(f"lock:user:{user}", now))
        if locked:
            self.summary.count(peer.host, "refused", now)
        return locked

    def is_locked(self, ip: str | None, user: str | None, now: float) -> bool:
        """True while `ip` is locked out, or `user` guarded (only its known addresses are
        evaluated). For callers that ask about an address rather than a request."""
        s = self.store
        return bool(ip and s.get(f"lock:ip:{ip}", now)) or bool(user and s.get(f"lock:user:{_clean(user)}", now))

    def is_known(self, peer: Peer, user: str, now: float) -> bool:
        """True when `peer` has authenticated as `user` within `KNOWN_FOR`."""
        return bool(self.store.get(f"known:{_clean(user)}|{_address(peer)}", now))

    def record_failure(self, peer: Peer, user: str | None, now: float, *, user_exists: bool = True) -> bool:
        """Count one wrong password; True when it starts a lockout that refuses this source.

        `user_exists=False` (a name we do not have) counts against the source only: an
        attacker trying random names must not grow per-user state.
        """
        s = self.store
        name = _clean(user) if user else None
        self.summary.count(peer.host, "guesses", now)
        if name and s.get(f"known:{name}|{_address(peer)}", now):
            return self._address_failure(peer, name, now)
        tripped = False
        for window, limit in self.limits:
            count = s.incr(f"f{window:.0f}:ip:{peer.host}", window, now)
            if count >= limit and not tripped and s.ttl(f"lock:ip:{peer.host}", now) is None:
                seconds, strike = self._lock(f"ip:{peer.host}", now)
                s.delete(f"f{self.window:.0f}:ip:{peer.host}", now)  # a fresh short count afterwards
                self._log(f"security: lockout ip={_clean(peer.host)} user={_clean(user)} failures={count} "
                          f"window={window:.0f}s strike={strike} until={self._until(now, seconds)} scope=ip")
                tripped = True
        if name and user_exists:
            count = s.incr(f"f3600:user:{name}", 3600.0, now)
            if count >= self.user_per_hour and s.ttl(f"lock:user:{name}", now) is None:
                seconds, strike = self._lock(f"user:{name}", now)
                s.delete(f"f3600:user:{name}", now)
                self._log(f"security: user-guard user={name} failures={count} window=3600s strike={strike} "
                          f"until={self._until(now, seconds)} (only addresses known for the user are evaluated)")
        if not tripped:
            # In a cluster another worker may have locked this source (or guarded this user)
            # a moment ago, resetting the count, before its flag reached this worker's copy:
            # the guess must still be refused, not answered with a fresh challenge.
            tripped = bool(s.read_through(f"lock:ip:{peer.host}", now)) or bool(
                name and user_exists and s.read_through(f"lock:user:{name}", now))
        return tripped

    def record_success(self, peer: Peer, user: str | None, now: float) -> None:
        """The right password: `peer` becomes (stays) known for `user` and that address's
        own failure count is cleared. The source IP's count is kept: otherwise an attacker
        with one valid account could reset it between guesses at others."""
        if not user:
            return
        name = _clean(user)
        self.store.put(f"known:{name}|{_address(peer)}", 1, KNOWN_FOR, now)
        self.store.delete(f"f{self.window:.0f}:addr:{name}|{_address(peer)}", now)

    def flush_summary(self, now: float) -> list[str]:
        """Write the per-source summary if its interval is over (call from a timer)."""
        return self.summary.flush(now)

    # -- helpers --------------------------------------------------------------------

    def _address_failure(self, peer: Peer, name: str, now: float) -> bool:
        """A known address failing for its own user: throttle that address alone."""
        s = self.store
        key = f"{name}|{_address(peer)}"
        count = s.incr(f"f{self.window:.0f}:addr:{key}", self.window, now)
        if count < self.max_failures or s.ttl(f"lock:addr:{key}", now) is not None:
            return bool(s.read_through(f"lock:addr:{key}", now))  # locked by another worker a moment ago
        seconds, _ = self._lock(f"addr:{key}", now)
        s.delete(f"f{self.window:.0f}:addr:{key}", now)
        self._log(f"security: phone-lockout user={name} address={peer.transport}:{_clean(peer.host)}:{peer.port} "
                  f"failures={count} until={self._until(now, seconds)}")
        return True

    def _lock(self, what: str, now: float) -> tuple[float, int]:
        """Lock `what` (`ip:...`, `user:...`, `addr:...`) with backoff: (seconds, strike)."""
        strike = self.store.incr(f"strikes:{what}", STRIKES_FOR, now)
        scope = what.split(":", 1)[0]
        self.started[scope] = self.started.get(scope, 0) + 1
        seconds = min(self.duration * 2 ** min(strike - 1, 32), self.max_duration)
        self.store.put(f"lock:{what}", 1, seconds, now)
        return seconds, strike

    def _until(self, now: float, seconds: float) -> str:
        return iso_utc(self._utc_at(now) + seconds)
