"""Where the lockout keeps its counters: a small store protocol, and its in-memory form.

The lockout (b2bua/lockout.py) decides; a `LockoutStore` only counts and remembers, so a
cluster can share one store and guesses spread over its workers count together
(contract: "Lockouts and failed-guess counts are shared"). The protocol is five calls on
integer values with a time to live, chosen because each is one Redis command:

    =====================================  ==============================================
    call                                   Redis
    =====================================  ==============================================
    incr(key, ttl, now) -> int             INCR key; PEXPIRE key ttl_ms NX  (one MULTI or
                                           Lua script, so a new counter always gets a life)
    get(key, now) -> int                   GET key            (absent -> 0)
    put(key, value, ttl, now) -> None      SET key value PX ttl_ms
    ttl(key, now) -> float | None          PTTL key           (-2 absent -> None; ms -> s)
    delete(key, now) -> None               DEL key
    =====================================  ==============================================

Rules every implementation keeps:

- Times are durations (`ttl`, seconds), never instants: workers on different hosts have
  different monotonic clocks, so nothing absolute is stored. `now` is the caller's
  monotonic clock; the in-memory store expires keys with it, a Redis store ignores it
  (Redis expires keys itself).
- `incr` on an absent or expired key starts it at 1 with life `ttl`; later `incr`s do not
  extend the life. A counter is therefore a fixed window opened by its first count.
- Keys are short ASCII strings the lockout builds (`f60:ip:192.0.2.7`, `lock:ip:...`,
  `known:alice|udp|192.0.2.10|5062`); a shared store should prefix them (say `b2bua:lo:`).
  User names inside keys are already cleaned by the lockout (no spaces or control chars).
- A store may forget keys early to bound its memory (the in-memory one does, oldest
  first); the lockout then errs towards letting a request be evaluated, never towards
  locking someone out.
- Calls never raise for a missing key. A store that cannot reach its backend may raise
  `OSError`; the lockout lets it propagate (the caller decides whether to fail open).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class LockoutStore(Protocol):
    """Integer counters and flags with a time to live; see the module docstring."""

    def incr(self, key: str, ttl: float, now: float) -> int: ...

    def get(self, key: str, now: float) -> int: ...

    def put(self, key: str, value: int, ttl: float, now: float) -> None: ...

    def ttl(self, key: str, now: float) -> float | None: ...

    def delete(self, key: str, now: float) -> None: ...

    def read_through(self, key: str, now: float) -> int:
        """`get`, past any local copy: what the shared backend holds this instant. A store
        that replicates flags to read them locally (redis_lockout) asks its backend; others
        are their backend. For the wrong-password path only, never per request."""
        ...


#: Keys the in-memory store holds at most. A flood from spoofed sources would otherwise
#: grow it without bound; each key is ~200 bytes, so 100,000 keys are ~20 MB.
MAX_KEYS = 100_000


class MemoryLockoutStore:
    """The one-process store: a dict of key -> (value, expires_at), least recently
    written first, so expired and stale keys are found at the front."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._data: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def _live(self, key: str, now: float) -> tuple[int, float] | None:
        item = self._data.get(key)
        if item is not None and item[1] <= now:
            del self._data[key]
            return None
        return item

    def incr(self, key: str, ttl: float, now: float) -> int:
        item = self._live(key, now)
        value, expires = (item[0] + 1, item[1]) if item is not None else (1, now + ttl)
        self._write(key, value, expires, now)
        return value

    def get(self, key: str, now: float) -> int:
        item = self._live(key, now)
        return item[0] if item is not None else 0

    def read_through(self, key: str, now: float) -> int:
        return self.get(key, now)

    def put(self, key: str, value: int, ttl: float, now: float) -> None:
        self._write(key, value, now + ttl, now)

    def ttl(self, key: str, now: float) -> float | None:
        item = self._live(key, now)
        return item[1] - now if item is not None else None

    def delete(self, key: str, now: float) -> None:
        self._data.pop(key, None)

    def _write(self, key: str, value: int, expires: float, now: float) -> None:
        self._data[key] = (value, expires)
        self._data.move_to_end(key)
        # Bound memory: drop expired keys at the front, then the least recently written.
        while self._data:
            first, (_, first_expires) = next(iter(self._data.items()))
            if first_expires > now and len(self._data) <= self._max_keys:
                break
            del self._data[first]
