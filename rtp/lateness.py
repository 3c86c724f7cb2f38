"""How late the media clock's callbacks run: a fixed histogram, cheap to fill on every read.

Why: packet loss at high call counts came with CPU to spare: stalls (a disk write, a burst of
recorder flushes, the collector) delay the read of the shared ports until a socket buffer
overflows. Each read's lateness (when it ran minus when it was due) goes into a histogram
whose buckets merge exactly across windows, so a benchmark can read p50/p99/max for just
the time it measured (`MediaEngine` logs one `media event=lateness` line per window).
"""

from __future__ import annotations

import bisect

#: Upper bucket edges in milliseconds; the last bucket holds everything later.
EDGES_MS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 200.0, 500.0)


class Lateness:
    """Counts of lateness per bucket of EDGES_MS, and the largest seen (seconds in, ms out)."""

    __slots__ = ("counts", "max_ms", "_edges")

    def __init__(self) -> None:
        self.counts = [0] * (len(EDGES_MS) + 1)
        self.max_ms = 0.0
        self._edges = [e / 1000 for e in EDGES_MS]

    def add(self, late: float) -> None:
        if late < 0.0:
            late = 0.0
        self.counts[bisect.bisect_left(self._edges, late)] += 1
        if late * 1000 > self.max_ms:
            self.max_ms = late * 1000

    @property
    def total(self) -> int:
        return sum(self.counts)

    def merge(self, other: Lateness) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, p: float) -> float:
        """The upper edge (ms) of the bucket holding the p-th percentile; inf past the last edge."""
        total = self.total
        if not total:
            return 0.0
        rank = p / 100 * total
        seen = 0
        for edge, count in zip((*EDGES_MS, float("inf")), self.counts):
            seen += count
            if seen >= rank:
                return edge
        return float("inf")

    def line(self) -> str:
        """The log form: parsed back by `parse` (bench/load.py)."""
        return (f"n={self.total} p50_ms={self.percentile(50)} p99_ms={self.percentile(99)} max_ms={self.max_ms:.1f} "
                f"buckets={','.join(map(str, self.counts))}")

    @classmethod
    def parse(cls, text: str) -> Lateness:
        fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
        out = cls()
        out.counts = [int(c) for c in fields["buckets"].split(",")]
        out.max_ms = float(fields["max_ms"])
        return out
