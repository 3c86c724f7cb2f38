"""Keeping the garbage collector's full pass away from live calls.

Why: when CPython's oldest generation is due, its collector walks every tracked object,
and the B2BUA holds ~150 of them per call (dialogs, transactions, messages, the media
relay). With 1,750 calls being set up one such pass took 60-170 ms, several times in a
few seconds (timed with `gc.callbacks` under bench/load.py), and nothing reads the media
sockets meanwhile: their buffers hold about 130 ms at that load, so calls already up lost
audio and their recordings got gaps whenever calls came and went.

Calls leave no cyclic garbage (tests/test_gc_policy.py sets up and ends calls and finds
none), so their objects are freed by reference counting when the call ends and need no
collector. Once a second `GcPolicy` collects the young generations (what has just become
garbage is freed, not kept) and then moves every survivor out of the collector's sight
(`gc.freeze`); the collector's own passes then see only what is newer than a second.
Anything cyclic that is frozen anyway (a library's cycle, a bug of ours) is collected by a
full pass (`gc.unfreeze` and `gc.collect`) while it is cheap: no more than FULL_MAX_CALLS
calls up, at most every FULL_EVERY seconds. Each full pass is one log line.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

#: How often survivors are frozen (seconds): what is younger is the collector's to see.
FREEZE_EVERY = 1.0
#: A full pass is taken only with this many calls up or fewer: ~150 objects a call, so it
#: stays a few milliseconds beyond what the process holds without calls.
FULL_MAX_CALLS = 50
#: ... and at most this often (seconds).
FULL_EVERY = 600.0
#: Past this many frozen objects a full pass is taken whatever it costs (and logged as a
#: warning): something is leaking cycles into the frozen generation faster than quiet
#: moments clear them, and memory matters more than one stall. ~150 objects a call make
#: 2,000 calls ~300,000 and startup ~50,000, so this is far past any real load. Counted
#: at most every FULL_EVERY seconds: the count walks every frozen object.
FULL_FORCED_FROZEN = 3_000_000


class GcPolicy:
    """Freezes the collector's survivors every FREEZE_EVERY seconds; a full pass when cheap.

    `calls` says how many calls are up. The process's collector is global by nature; this
    object is its only user, and `stop()` hands it back as it found it (unfrozen)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, calls: Callable[[], int], log: logging.Logger,
                 freeze_every: float = FREEZE_EVERY, full_max_calls: int = FULL_MAX_CALLS,
                 full_every: float = FULL_EVERY, full_forced_frozen: int = FULL_FORCED_FROZEN) -> None:
        self.loop = loop
        self.calls = calls
        self.log = log
        self.freeze_every = freeze_every
        self.full_max_calls = full_max_calls
        self.full_every = full_every
        self.full_forced_frozen = full_forced_frozen
        self.full_passes = 0
        self._last_full = loop.time()
        self._next_count = self._last_full
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """After startup: what startup built (modules, config, sockets) lives as long as we do."""
        gc.collect()
        gc.freeze()
        self._timer = self.loop.call_later(self.freeze_every, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gc.unfreeze()

    def _tick(self) -> None:
        self._timer = None
        try:
            now = self.loop.time()
            if now - self._last_full >= self.full_every:
                if self.calls() <= self.full_max_calls:
                    self.full_pass(now)
                    return  # it collected and froze everything
                if now >= self._next_count:
                    # Counting the frozen walks all of them (~30 ms at 2,000 calls): not every second.
                    self._next_count = now + self.full_every
                    if gc.get_freeze_count() > self.full_forced_frozen:
                        self.full_pass(now, forced=True)
                        return
            gc.collect(1)  # the young generations: a few thousand objects, about a millisecond
            gc.freeze()
        finally:
            self._timer = self.loop.call_later(self.freeze_every, self._tick)

    def full_pass(self, now: float, forced: bool = False) -> int:
        """Collect everything, frozen included; returns how many objects were garbage."""
        frozen = gc.get_freeze_count()
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._last_full = now
        self.full_passes += 1
        self.log.log(logging.WARNING if forced else logging.INFO,
                     "gc event=full-pass calls=%d frozen=%d garbage=%d ms=%.1f%s", self.calls(), frozen, found,
                     1000 * (time.perf_counter() - started), " forced=too-many-frozen" if forced else "")
        return found
