"""Modular arithmetic for RTP's 16-bit sequence numbers and 32-bit timestamps.

Both counters wrap (a sequence number every 21 minutes at 50 packets/s, a timestamp
every 6.2 days at 8 kHz, but it starts at a random value, RFC 3550 §5.1, so it may wrap
at any moment). Comparisons are therefore "which is ahead by less than half the
space", and state kept across packets is an unwrapped (extended) integer, as in
RFC 3550 Appendix A.1.
"""

from __future__ import annotations

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
MAX_DROPOUT = 3000  # RFC 3550 A.1: a forward jump larger than this is a restart, not loss
MAX_MISORDER = 100  # RFC 3550 A.1: a backward step larger than this is a restart, not reordering
REORDER_WINDOW = 64  # packets remembered for duplicate detection: 1.28 s at 20 ms, beyond any jitter buffer


def uint16_add(a: int, b: int) -> int:
    """(a + b) mod 2^16."""
    return (a + b) & 0xFFFF


def uint16_diff(a: int, b: int) -> int:
    """Signed distance from b to a, in [-2^15, 2^15): positive when a is ahead of b."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def uint16_gt(a: int, b: int) -> bool:
    """True when sequence number a is ahead of b (RFC 1982 serial number arithmetic)."""
    return 0 < uint16_diff(a, b)


def uint32_add(a: int, b: int) -> int:
    """(a + b) mod 2^32."""
    return (a + b) & 0xFFFFFFFF


def uint32_diff(a: int, b: int) -> int:
    """Signed distance from b to a, in [-2^31, 2^31): positive when a is ahead of b."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class Unwrapper:
    """Turns a wrapping counter into a monotonic-ish integer (RFC 3550 A.1 "extended").

    Each value is placed at the extended position nearest to the previous one, so
    small reorderings go backwards and wraps go forwards.
    """

    __slots__ = ("_bits", "_half", "_mask", "_last")

    def __init__(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def unwrap(self, value: int) -> int:
        """The extended value of `value`."""
        last = self._last
        if last is None:
            self._last = value
            return value
        delta = ((value - last + self._half) & self._mask) - self._half
        extended = last + delta
        if delta > 0:
            self._last = extended
        return extended

    @property
    def last(self) -> int | None:
        """The highest extended value seen so far."""
        return self._last


class ReorderWindow:
    """Accepts each sequence number once within a sliding window (duplicate filter).

    Networks and some SBCs duplicate packets; feeding a duplicate to the recorder would
    add its samples twice. The window is a bitmask of the last REORDER_WINDOW extended
    sequence numbers; anything older than the window is refused (too late to be useful),
    and a jump bigger than MAX_DROPOUT/MAX_MISORDER restarts the window (the sender
    restarted, RFC 3550 A.1).
    """

    __slots__ = ("_highest", "_mask", "_size")

    def __init__(self, size: int = REORDER_WINDOW) -> None:
        self._size = size
        self._highest: int | None = None  # highest 16-bit sequence number accepted
        self._mask = 0  # bit i set: highest - i was seen

    def accept(self, sequence: int) -> bool:
        """True the first time `sequence` is seen within the window; False for duplicates."""
        highest = self._highest
        if highest is None:
            self._highest = sequence
            self._mask = 1
            return True
        delta = ((sequence - highest + 0x8000) & 0xFFFF) - 0x8000
        if delta > 0:
            if delta > MAX_DROPOUT:
                self._highest = sequence
                self._mask = 1
                return True
            self._mask = ((self._mask << delta) | 1) & ((1 << self._size) - 1)
            self._highest = sequence
            return True
        back = -delta
        if back >= self._size:
            if back > MAX_MISORDER:  # a restart far behind: start over rather than go deaf
                self._highest = sequence
                self._mask = 1
                return True
            return False
        bit = 1 << back
        if self._mask & bit:
            return False
        self._mask |= bit
        return True
