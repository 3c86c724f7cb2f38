"""One summary line per hostile source per interval, instead of a line per request.

A flood writes as many requests as the attacker likes; a log line per request turned
20 s of it into 807 KB of log (issue 16), and a disk filled by logs costs recordings.
Events worth a line of their own (a lockout starting) are logged by their owner; the
rest (refused requests, strangers answered or dropped, malformed messages) are counted
here by source and kind and written as one line per source every `interval` seconds:

    security: summary ip=192.0.2.7 seconds=60 refused=812 stranger=40 malformed=3

A caller may give the event's own line: the first event of each kind from each source in
an interval is then written at once (so an operator sees who is there), up to `max_first_lines` per
interval so spoofed sources cannot turn it back into a line per request.

Sans-IO: `count()` takes `now`; lines are written when a call finds the interval over
(or on `flush()`, which the server calls from its timer), so an idle server writes nothing. Memory is bounded: past
`max_sources` distinct sources in one interval, further ones are counted together as
`ip=others`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

#: Seconds between summaries: often enough to act on, rare enough to stay small.
DEFAULT_INTERVAL = 60.0
#: Distinct sources tracked per interval; more are merged into `ip=others`.
MAX_SOURCES = 1000
#: Lines per interval: the busiest sources get a line each, the rest are merged.
MAX_LINES = 20
#: Events written at once per interval (the first of each new source).
MAX_FIRST_LINES = 10

_LOGGER = logging.getLogger("b2bua.security")


class HostileSummary:
    """Counts (source, kind) events and writes them as periodic per-source lines."""

    def __init__(
        self,
        log: Callable[[str], None] | None = None,
        interval: float = DEFAULT_INTERVAL,
        *,
        max_sources: int = MAX_SOURCES,
        max_lines: int = MAX_LINES,
        max_first_lines: int = MAX_FIRST_LINES,
        first_log: Callable[[str], None] | None = None,
    ) -> None:
        self._log = log if log is not None else _LOGGER.info
        self.interval = interval
        self._max_sources = max_sources
        self._max_lines = max_lines
        self._max_first = max_first_lines
        self._first_log = first_log if first_log is not None else (log if log is not None else _LOGGER.warning)
        self._first_written = 0
        self._counts: dict[str, Counter[str]] = {}
        self._since: float | None = None

    def count(self, source: str, kind: str, now: float, n: int = 1, *, line: str | None = None) -> None:
        """Count `n` events of `kind` from `source`; may write the previous interval.

        `line`: the event's own log line, written if this is the source's first event of
        this kind this interval and the interval's budget of such lines is not spent.
        """
        self.flush(now)
        if self._since is None:
            self._since = now
        if source not in self._counts and len(self._counts) >= self._max_sources:
            source = "others"
        counts = self._counts.get(source)
        if line is not None and (counts is None or kind not in counts) and self._first_written < self._max_first:
            self._first_written += 1
            self._first_log(f"{line} (more from ip={source} go into a summary every {self.interval:.0f} s)")
        self._counts.setdefault(source, Counter())[kind] += n

    def flush(self, now: float, *, force: bool = False) -> list[str]:
        """Write (and return) the summary lines when the interval is over (or `force`)."""
        if self._since is None or (not force and now - self._since < self.interval):
            return []
        seconds = max(1, round(now - self._since))
        ranked = sorted(self._counts.items(), key=lambda kv: -sum(kv[1].values()))
        head, tail = ranked[: self._max_lines], ranked[self._max_lines :]
        if tail:
            merged: Counter[str] = Counter()
            for _, counts in tail:
                merged.update(counts)
            head.append((f"others({len(tail)})", merged))
        lines = []
        for source, counts in head:
            fields = " ".join(f"{kind}={n}" for kind, n in sorted(counts.items()))
            lines.append(f"security: summary ip={source} seconds={seconds} {fields}")
        for line in lines:
            self._log(line)
        self._counts = {}
        self._since = None
        self._first_written = 0
        return lines
