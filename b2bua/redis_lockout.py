"""The lockout's counters in Redis, so guesses spread over a cluster's workers count together.

Implements the `LockoutStore` protocol of `lockout_store.py` (incr/get/put/ttl/delete with
a time to live). Times stored are durations only (Redis expires keys itself): workers on
different hosts have different monotonic clocks.

The lockout asks the store on every request that needs authentication (`refused()`: up to
three reads), and a flood of such requests must not become a flood of Redis round trips on
the loop that carries media. Measured (bench/redis_rtt.py --lockout, this shared 2-core
VM): `refused()` for a stranger costs ~2.5 us on the in-memory store and ~215 us median
(p99 ~1.7 ms) when each read is a Redis GET. So the keys that are only *read* on that path,
the flags (`lock:...`, `known:...`), are replicated: every worker holds a local copy, kept
current by pub/sub (each put/delete of a flag is one script that writes and publishes), and
reads them from memory. Counters (`incr`: the failures, the strikes) are read-modify-write
and must be summed across workers, so `incr` is one synchronous script call; it is only
made for a request whose credentials were evaluated and were wrong, which a locked-out
source no longer reaches.

When Redis does not answer, the store does not raise: counters go to a local store
(`fallback`) and Redis is left alone for `RETRY_AFTER` seconds, so a dead Redis costs one
timeout per interval; flags keep being read and written locally. During an outage each
worker therefore counts alone (a guesser spread over N workers gets up to N times the
guesses until Redis is back: the lockout of a single process, the guesser still stopped).
On reconnect the flags are reloaded from Redis; counts made locally are not copied back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from b2bua.lockout_store import MemoryLockoutStore

log = logging.getLogger("b2bua.shared_state")

#: Seconds Redis is left alone after it failed to answer (the fallback counts meanwhile).
RETRY_AFTER = 1.0
#: Seconds between attempts to re-subscribe after the link was lost.
RECONNECT_DELAY = 0.5
#: Seconds of silence on the subscription after which Redis is asked whether it is there.
HEARTBEAT = 2.0
#: Keys only read on the hot path, replicated to every worker (see the module docstring).
FLAG_PREFIXES = ("lock:", "known:")

# INCR and, on a counter without a life yet, give it one (the window opens at the first count).
_INCR = """
local v = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return v
"""
# KEYS[1] the flag; ARGV: channel, short key, value ('' deletes), ttl ms.
_FLAG = """
if ARGV[3] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) end
redis.call('PUBLISH', ARGV[1], cjson.encode({ARGV[2], ARGV[3], ARGV[4]}))
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, int(round(seconds * 1000)))


def _is_flag(key: str) -> bool:
    return key.startswith(FLAG_PREFIXES)


class RedisLockoutStore:
    """A `LockoutStore` in Redis under `prefix`.

    `client` is a synchronous `redis.Redis` with a short timeout and no retries (see
    `shared_state.sync_client`); `subscriber` a `redis.asyncio.Redis` without a socket
    timeout, for the flags' pub/sub (`await start()` before serving). Without a subscriber
    (tests of the counters alone) flags are read from Redis directly. `fallback` counts
    while Redis is away.
    """

    def __init__(
        self,
        client: Any,
        fallback: Any = None,
        prefix: str = "b2bua:lo:",
        *,
        subscriber: Any = None,
        clock: Any = time.monotonic,
    ) -> None:
        self._client = client
        self._fallback = fallback if fallback is not None else MemoryLockoutStore()
        self._prefix = prefix
        self._channel = prefix + "flags"
        self._incr = client.register_script(_INCR)
        self._flag = client.register_script(_FLAG)
        self._clock = clock  # for the retry interval and the local flags' lives
        self._down_until: float | None = None
        self._subscriber = subscriber
        self._flags = MemoryLockoutStore()  # the local copy of the flags (own clock)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    # -- the protocol -------------------------------------------------------------------

    def incr(self, key: str, ttl: float, now: float) -> int:
        ok, value = self._call(lambda: self._incr(keys=[self._prefix + key], args=[_ms(ttl)]))
        return int(value) if ok else self._fallback.incr(key, ttl, now)

    def get(self, key: str, now: float) -> int:
        if _is_flag(key) and self._replicated:
            return self._flags.get(key, self._clock())
        ok, value = self._call(self._client.get, self._prefix + key)
        if not ok:
            return int((self._flags if _is_flag(key) else self._fallback).get(key, self._clock() if _is_flag(key) else now))
        return int(value) if value is not None else 0

    def read_through(self, key: str, now: float) -> int:
        """The flag as Redis holds it now: another worker may have set it a moment ago and
        its publication not have reached this one yet."""
        ok, value = self._call(self._client.get, self._prefix + key)
        if not ok:
            return self.get(key, now)
        return int(value) if value is not None else 0

    def put(self, key: str, value: int, ttl: float, now: float) -> None:
        if _is_flag(key):
            self._flags.put(key, int(value), ttl, self._clock())
            self._call(lambda: self._flag(keys=[self._prefix + key], args=[self._channel, key, int(value), _ms(ttl)]))
            return
        ok, _ = self._call(lambda: self._client.set(self._prefix + key, int(value), px=_ms(ttl)))
        if not ok:
            self._fallback.put(key, value, ttl, now)

    def ttl(self, key: str, now: float) -> float | None:
        if _is_flag(key) and self._replicated:
            return self._flags.ttl(key, self._clock())
        ok, value = self._call(self._client.pttl, self._prefix + key)
        if not ok:
            return (self._flags.ttl(key, self._clock()) if _is_flag(key) else self._fallback.ttl(key, now))
        return int(value) / 1000 if int(value) >= 0 else None

    def delete(self, key: str, now: float) -> None:
        if _is_flag(key):
            self._flags.delete(key, self._clock())
            self._call(lambda: self._flag(keys=[self._prefix + key], args=[self._channel, key, "", 0]))
            return
        ok, _ = self._call(self._client.delete, self._prefix + key)
        if not ok:
            self._fallback.delete(key, now)

    # -- Redis, or the fallback -------------------------------------------------------------

    @property
    def _replicated(self) -> bool:
        """True when the local flags are a live copy (subscribed), so reads stay local."""
        return self._task is not None and self._ready.is_set()

    def _call(self, fn: Any, *args: Any) -> tuple[bool, Any]:
        """(True, result) from Redis, or (False, None) when it is away (then the fallback)."""
        if self._down_until is not None and self._clock() < self._down_until:
            return False, None
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - redis-py's ConnectionError, TimeoutError, ...
            if self._down_until is None:
                log.warning("lockout event=redis-lost reason=%r (each worker counts alone until it is back)",
                            str(exc) or type(exc).__name__)
            self._down_until = self._clock() + RETRY_AFTER
            return False, None
        if self._down_until is not None:
            log.info("lockout event=redis-back")
            self._down_until = None
        return True, result

    # -- the flags' copy ------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and load the flags; returns once the local copy is live."""
        if self._subscriber is None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-lockout-flags")
        ready = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            task, self._task = self._task, None
            task.result()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass
        if self._subscriber is not None:
            await self._subscriber.aclose()

    def _apply(self, data: Any) -> None:
        key, value, ttl_ms = json.loads(data)
        if value == "":
            self._flags.delete(key, self._clock())
        else:
            self._flags.put(key, int(value), int(ttl_ms) / 1000, self._clock())

    async def _load(self) -> None:
        flags = MemoryLockoutStore()
        now = self._clock()
        for pattern in FLAG_PREFIXES:
            async for full in self._subscriber.scan_iter(match=self._prefix + pattern + "*", count=1000):
                pipe = self._subscriber.pipeline(transaction=False)
                value, pttl = await pipe.get(full).pttl(full).execute()
                if value is not None and int(pttl) > 0:
                    name = full.decode() if isinstance(full, bytes) else str(full)
                    flags.put(name[len(self._prefix):], int(value), int(pttl) / 1000, now)
        self._flags = flags

    async def _run(self) -> None:
        first = True
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(self._channel)  # before loading: later changes arrive after it
                await self._load()
                self._ready.set()
                if not first:
                    log.info("lockout event=flags-reloaded")
                first = False
                quiet_since = self._clock()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=HEARTBEAT)
                    if message is None and self._clock() - quiet_since >= HEARTBEAT:
                        # A Redis that vanished without closing the connection (a partition)
                        # would leave the subscription silent for ever: ask it something.
                        await asyncio.wait_for(self._subscriber.ping(), HEARTBEAT)
                        quiet_since = self._clock()
                    if message is not None and message.get("type") == "message":
                        try:
                            self._apply(message["data"])
                        except (ValueError, TypeError):
                            log.warning("lockout event=bad-message channel=%s", self._channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - redis-py raises several kinds on a lost link
                if first:
                    raise
                log.warning("lockout event=flags-link-lost reason=%r (flags kept locally)", str(exc) or type(exc).__name__)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - the link is already gone
                    pass
            await asyncio.sleep(RECONNECT_DELAY)
