"""Where each RTP packet's samples belong on the call's wall-clock timeline.

Positions are whole samples at 8 kHz since the recorder's `t0` (the answer), so both
channels of a recording share one timeline and a missing packet is simply a position nobody
wrote: silence, never a shift. Sans-IO and clock-free: callers pass arrival times.

Placement (per channel, per SSRC, `StreamClock`): the first packet of an SSRC is anchored at
its arrival; every later packet goes to `anchor + (timestamp - anchor timestamp)`, the RTP
timestamp being the sender's sample clock (RFC 3550 §5.1), unwrapped across 32-bit wrap. The
anchor is re-taken when a newer packet's timestamp disagrees with its arrival by more than
`RESYNC_SECONDS` (a sender that restarted its timestamps), or when newer packets keep
arriving too late to place for `LATE_RUN_SECONDS` (a sender clock slower than ours), but
never for a reordered or duplicate packet, which lands where its timestamp says.

Buffering (`Timeline`): a two-channel int16 block from the last finalised position onward.
Writing a packet is one numpy slice assignment, so a duplicate overwrites itself instead of
doubling; `place_many` writes a whole batch of packets (the recorder's second of G.711) in one
scatter with the same result; `take(upto)` hands back finished frames already interleaved as
the WAV wants them.

Memory: between its flushes a recorder's timeline holds only the jitter window (the audio
of the second waits undecoded, G.711, in the media engine's rows), so the block is small
(what the window holds) and grows to the second only while a flush places it. `take`
hands the caller the block's head itself (no copy) and keeps the rest in a fresh small
block: a big block lives until the disk writer has written it, not for the call's length.
(Issue 17: a block kept at its high-water mark was ~40 KB resident per call, a third of
the RSS each recorded call cost.)
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

SAMPLE_RATE = 8000  # G.711: the recording's rate, so positions are G.711 samples
CHANNELS = 2  # contract: channel 1 external party, channel 2 user
RESYNC_SECONDS = 1.0  # a timestamp this far from its arrival is a jump, not network jitter
RESYNC_SAMPLES = int(RESYNC_SECONDS * SAMPLE_RATE)
LATE_RUN_SECONDS = 1.0  # this much newer audio in a row too late to place: our anchor is stale (drift)
LATE_RUN_SAMPLES = int(LATE_RUN_SECONDS * SAMPLE_RATE)
MAX_SSRCS_PER_CHANNEL = 4  # old SSRCs kept so stragglers after a switch still land right
SEQ_NEWER_WINDOW = 0x8000  # RFC 3550 A.1 style: a seq ahead by less than half the space is newer
MAX_PENDING_SECONDS = 60.0  # audio held before finalising; a packet further ahead is bogus
MAX_PENDING_FRAMES = int(MAX_PENDING_SECONDS * SAMPLE_RATE)
#: A block larger than this is not kept once finalised: what lies beyond moves to a fresh
#: block of its own size (the recorder's jitter window, 0.2 s, and what came after it).
RETAINED_CAPACITY_FRAMES = SAMPLE_RATE // 4
MIN_BLOCK_FRAMES = 160  # a fresh block for nothing at all: one packet's room
#: A new timeline's block: nothing is placed before the recorder's first flush, which
#: gives the block the size its second needs.
INITIAL_CAPACITY_FRAMES = MIN_BLOCK_FRAMES


@dataclass
class _Anchor:
    anchor_pos: int  # timeline position of the anchor packet's first sample
    anchor_ts: int  # its extended (unwrapped) timestamp
    newest_ts: int  # extended timestamp of the newest packet (by sequence number)
    newest_seq: int
    late_run: int = 0  # samples of consecutive newer packets that arrived too late to place


class StreamClock:
    """Maps (ssrc, seq, timestamp, arrival) to a timeline position for one channel."""

    def __init__(self) -> None:
        self._anchors: OrderedDict[int, _Anchor] = OrderedDict()
        self.resyncs = 0  # times an anchor was re-taken (SSRC changes not counted)

    def anchor(self, ssrc: int) -> _Anchor | None:
        """The anchor of `ssrc`, if it has one (for the batch lane, rtp.fastpath)."""
        return self._anchors.get(ssrc)

    def position(self, ssrc: int, seq: int, timestamp: int, length: int, arrival_pos: int,
                 horizon: int) -> int:
        """Where the packet's first sample goes; `horizon` is the first position not yet final."""
        anchor = self._anchors.get(ssrc)
        if anchor is None:
            if len(self._anchors) >= MAX_SSRCS_PER_CHANNEL:
                self._anchors.popitem(last=False)
            self._anchors[ssrc] = _Anchor(arrival_pos, timestamp, timestamp, seq)
            return arrival_pos
        # Unwrap against the newest timestamp (RFC 3550 §5.1 wrap), inlined: the hot path.
        ts = anchor.newest_ts + (((timestamp - anchor.newest_ts) + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        pos = anchor.anchor_pos + (ts - anchor.anchor_ts)
        step = (seq - anchor.newest_seq) & 0xFFFF
        if step == 0 or step >= SEQ_NEWER_WINDOW:
            return pos  # a duplicate or a reordered packet: its timestamp decides
        anchor.newest_seq = seq
        drift = pos - arrival_pos
        if drift > RESYNC_SAMPLES or drift < -RESYNC_SAMPLES:
            # The timestamp jumped (a restarted sender, a source switch behind one SSRC, a
            # sender that fell silent and went on from the timestamp where it stopped):
            # trust the arrival instead.
            return self._resync(anchor, ts, arrival_pos)
        if pos < horizon:
            # Newer yet too late to place: dropped, unless it keeps happening, which means
            # the sender's clock has drifted from ours by more than the jitter window.
            anchor.late_run += length
            if anchor.late_run >= LATE_RUN_SAMPLES:
                return self._resync(anchor, ts, arrival_pos)
        else:
            anchor.late_run = 0
        anchor.newest_ts = ts
        return pos

    def _resync(self, anchor: _Anchor, ts: int, arrival_pos: int) -> int:
        """Re-take the anchor at this packet's arrival."""
        self.resyncs += 1
        anchor.anchor_pos = arrival_pos
        anchor.anchor_ts = ts
        anchor.newest_ts = ts
        anchor.late_run = 0
        return arrival_pos


class Timeline:
    """Two channels of int16 audio from `base` (first position not yet taken) onward."""

    def __init__(self, channels: int = CHANNELS) -> None:
        self.base = 0
        self.channels = channels
        self._buf = np.zeros((INITIAL_CAPACITY_FRAMES, channels), dtype=np.int16)
        self._end = 0  # frames of _buf that may hold non-zero samples
        self.dropped_late = 0  # samples that arrived after their position was finalised
        self.dropped_ahead = 0  # samples too far ahead of `base` to hold

    def place(self, channel: int, pos: int, samples: np.ndarray) -> None:
        """Write `samples` at timeline position `pos`, dropping what is already final."""
        offset = pos - self.base
        n = samples.shape[0]
        if offset < 0:
            cut = min(-offset, n)
            self.dropped_late += cut
            samples = samples[cut:]
            n -= cut
            offset = 0
            if n == 0:
                return
        end = offset + n
        if end > MAX_PENDING_FRAMES:
            self.dropped_ahead += n
            return
        if end > self._buf.shape[0]:
            self._grow(end)
        self._buf[offset:end, channel] = samples
        if end > self._end:
            self._end = end

    def place_many(self, channel: int, positions: list[int], lengths: list[int], samples: np.ndarray) -> None:
        """`place` for many packets at once: exactly as calling `place` for each in turn, a
        later packet overwriting an earlier one where they overlap.

        `positions` and `lengths` (one per packet, lengths > 0) say where each packet goes
        and how long it is; `samples` is every packet's samples concatenated in the same
        order. A stream in order without loss is one slice assignment, checked with list
        operations (cheaper than numpy calls on 50 numbers); anything else is one scatter.
        """
        if not positions:
            return
        first = positions[0]
        ends = list(accumulate(lengths, initial=first))
        if ends[:-1] == positions:  # in order and back to back: the usual second of a stream
            offset = first - self.base
            end = ends[-1] - self.base
            if offset >= 0 and end <= MAX_PENDING_FRAMES:
                if end > self._buf.shape[0]:
                    self._grow(end)
                self._buf[offset:end, channel] = samples
                if end > self._end:
                    self._end = end
                return
        if len(positions) == 1:
            self.place(channel, first, samples)
            return
        if self._place_on_grid(channel, positions, lengths, samples):
            return
        self._scatter(channel, np.array(positions, np.int64), np.array(lengths, np.int64), samples)

    def _place_on_grid(self, channel: int, positions: list[int], lengths: list[int], samples: np.ndarray) -> bool:
        """`place_many` for a stream with gaps: packets of one length, in order, each a
        whole number of packet times after the first (lost packets leave whole slots).
        The span is viewed as a (slots, length) grid and the packets are assigned as its
        rows; packets already final are dropped (counted) first, and one that straddles
        the final edge keeps its tail, as `place` does.
        False, having changed nothing, for anything else.

        Why: a lossy network (or our own loss when overloaded) puts a gap in nearly every
        second of a stream, and `_scatter`'s general path cost several times the in-order
        slice (bench/load.py at 2,000 calls: 14% of the process in it, against ~7 us a
        second of a leg here)."""
        size = lengths[0]
        if lengths.count(size) != len(lengths):
            return False
        first = positions[0]
        slots = [(p - first) // size for p in positions]
        if [k * size + first for k in slots] != positions or not all(map(int.__lt__, slots, slots[1:])):
            return False  # off the grid, reordered or overlapping
        base = self.base
        end = positions[-1] + size - base
        if end > MAX_PENDING_FRAMES:
            return False  # far ahead: _scatter's drop rule
        if end > self._buf.shape[0]:
            self._grow(end)
        if first < base:  # the oldest are already final (we or the network fell behind)
            late = bisect_right(positions, base - size)  # how many end at or before base
            self.dropped_late += late * size
            if late < len(positions) and positions[late] < base:
                # This one straddles base, as when a flush overtook a late burst: `place`
                # drops (counts) its final head and keeps its tail.
                self.place(channel, positions[late], samples[late * size : (late + 1) * size])
                late += 1
            if late == len(positions):
                return True
            first = positions[late]
            slots = [k - slots[late] for k in slots[late:]]
            samples = samples[late * size :]
        offset = first - base
        grid = self._buf[offset:end, channel].reshape(slots[-1] + 1, size)  # a view: one axis split
        grid[slots] = samples.reshape(len(slots), size)
        if end > self._end:
            self._end = end
        return True

    def _scatter(self, channel: int, positions: np.ndarray, lengths: np.ndarray, samples: np.ndarray) -> None:
        """`place_many` in one numpy scatter: gaps, reordering, overlaps, late or far-ahead
        packets. NumPy gives no order for repeated indices in a fancy assignment (its
        indexing guide, "Detailed notes"), so overlapping packets (duplicates, a stream
        whose timestamps overlap) are resolved explicitly: the last writer wins."""
        offsets = positions - self.base
        src = None  # where each kept packet's samples start in `samples`, when some are cut
        if offsets.min() < 0 or offsets.max() + lengths.max() > MAX_PENDING_FRAMES:
            # Rare: late (already final) or impossibly far ahead packets, dropped as `place` does.
            cut = np.minimum(np.maximum(-offsets, 0), lengths)
            self.dropped_late += int(cut.sum())
            lengths = lengths - cut
            starts = np.cumsum(lengths) - lengths + np.cumsum(cut)  # first kept sample, in `samples`
            offsets = np.maximum(offsets, 0)
            ahead = (offsets + lengths > MAX_PENDING_FRAMES) & (lengths > 0)
            self.dropped_ahead += int(lengths[ahead].sum())
            keep = (lengths > 0) & ~ahead
            if not keep.any():
                return
            offsets, lengths, src = offsets[keep], lengths[keep], starts[keep]
        ends = offsets + lengths
        end = int(ends.max())
        if end > self._buf.shape[0]:
            self._grow(end)
        column = self._buf[:, channel]
        if src is not None:
            runs = np.cumsum(lengths) - lengths
            samples = samples[np.repeat(src - runs, lengths) + np.arange(int(lengths.sum()))]
        if offsets.shape[0] == 1:
            column[offsets[0] : ends[0]] = samples
        elif (offsets[1:] >= ends[:-1]).all():  # in order, no overlap: the usual stream
            if (offsets[1:] == ends[:-1]).all():  # and no gap: one slice
                column[offsets[0] : end] = samples
            else:
                runs = np.cumsum(lengths) - lengths
                column[np.repeat(offsets - runs, lengths) + np.arange(samples.shape[0])] = samples
        else:
            # Reordered or overlapping: each position takes the sample of the last packet
            # (the highest index in `samples`) that covers it, so no index repeats.
            runs = np.cumsum(lengths) - lengths
            where = np.repeat(offsets - runs, lengths) + np.arange(samples.shape[0])
            lo = int(offsets.min())
            last = np.full(end - lo, -1, dtype=np.intp)
            np.maximum.at(last, where - lo, np.arange(samples.shape[0]))
            written = last >= 0
            column[lo:end][written] = samples[last[written]]
        if end > self._end:
            self._end = end

    def _grow(self, needed: int) -> None:
        # Doubling for packets placed one by one (`place`); a flush's second (`place_many`)
        # gets what it needs in one step, so no block is bigger than its audio needs.
        capacity = min(max(needed, 2 * self._buf.shape[0]), MAX_PENDING_FRAMES)
        grown = np.zeros((capacity, self.channels), dtype=np.int16)
        grown[: self._end] = self._buf[: self._end]
        self._buf = grown

    def take(self, upto: int) -> np.ndarray:
        """Finalise [base, upto): return those frames, an (n, channels) array the caller
        owns (the timeline never writes it again: it moves on to a fresh block)."""
        k = upto - self.base
        if k <= 0:
            return np.zeros((0, self.channels), dtype=np.int16)
        block = self._buf
        if k > block.shape[0]:
            out = np.zeros((k, self.channels), dtype=np.int16)
            out[: self._end] = block[: self._end]
            self._advance(k, fresh=True)
            return out
        self._advance(k, fresh=True)  # what lies past upto is copied to a fresh block first
        if k < block.shape[0]:
            # Cut the block to its first k frames in place (realloc: no copy), so audio the
            # writer holds (a slow disk's backlog) is its frames and nothing more. Safe: no
            # view of the block outlives the timeline's own methods.
            block.resize((k, self.channels), refcheck=False)
        return block  # past _end the block is zeros: silence, as it should be

    def discard(self, upto: int) -> None:
        """Finalise [base, upto) without keeping it (nothing is being recorded there)."""
        if upto > self.base:
            self._advance(upto - self.base)

    def _advance(self, k: int, fresh: bool = False) -> None:
        """Move `base` on by `k`: what lies beyond moves to the block's start, in a fresh
        small block when the old one was handed out (`take`) or grew past the retained size."""
        buf, end = self._buf, self._end
        remaining = end - k
        if fresh or buf.shape[0] > RETAINED_CAPACITY_FRAMES:
            block = np.zeros((max(remaining, MIN_BLOCK_FRAMES), self.channels), dtype=np.int16)
            if remaining > 0:
                block[:remaining] = buf[k:end]
            self._buf = block
        elif remaining > 0:
            buf[:remaining] = buf[k:end]
            buf[remaining:end] = 0
        else:
            buf[:end] = 0
        self._end = max(remaining, 0)
        self.base += k
