"""The leg table and the batch lane: every call's per-leg state, and the common audio packet
of every call on a media port (shared, or a call's own, IPv4 or IPv6: rtp.mux) handled in numpy.

`LegTable` holds each leg's stream state (our SSRC, sequence number and timestamp towards
its party, the offsets from the source stream, when audio last went to it, how many of its
packets were forwarded) as the ONLY copy: struct-of-arrays, each field an `array.array`
(fast scalar reads and writes for `rtp.relay`'s per-packet code, through `TableStream` and
`Leg`) with a numpy view of the same memory for the batch (`forward`). The relay's
per-packet path (`OutStream.map`, the readable rules) and the batch path read and write the
same numbers, so nothing is lent or handed back.

Why a batch path: on the shared sockets (rtp.mux) a recvmmsg hands over dozens of
datagrams from as many calls at once (per-call ports: one read of every port epoll names
does), and most are the same case: a latched party's next G.711 packet, to be re-stamped
(sequence number, timestamp, SSRC) and sent on to the other party. Doing that per packet
in Python costs ~20 us each; here the header fields of the whole batch are read, checked
and rewritten with a few numpy operations, and the batch leaves in one sendmmsg per port
(a sendto each where every packet leaves from a port of its own).

Which packets the batch takes is decided per leg by `refresh` (from `CallRelay.batchable`:
latched, G.711 both ways, no prompt, no transcoding, no in-band detection, a started source
stream, not in the pause grace) and per packet by `forward` (the plain header, the source
SSRC, in order or after a gap: `OutStream.map`'s offset case). Anything else (an event, a
new or jumping SSRC, a reordered or duplicate packet, CSRCs or an extension, another
payload type) goes to `CallRelay.receive`, after which the owner calls `refresh`.

Recording: each leg's recording clock (`rtp.relay.LegClock`: `StreamClock`'s rules, the
current SSRC's anchor in the `ck_*` fields) and the packets it placed and the recorder has
not taken yet (`wcount` rows of position and length, `wpos` and `wlen`, their payloads end
to end in the leg's `wbuf` area, `wfill` bytes of it) are here too. The relay hands the rows
to the recorder (`Recorder.place_g711`) before its flush, a *1 and its close; the batch
works out each packet's position itself for the whole batch where it is
`StreamClock.position`'s plain case, and leaves anything else to the relay's per-packet
`CallRelay.record` on the same rows.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from rtp.packet import MAX_PACKET_SIZE
from rtp.sequence import MAX_DROPOUT
from rtp.source_keys import NOWHERE
from rtp.timeline import LATE_RUN_SAMPLES, MAX_PENDING_FRAMES, RESYNC_SAMPLES, SAMPLE_RATE, SEQ_NEWER_WINDOW

# rtp.mux's SharedPort and SharedSession and rtp.relay's CallRelay, which import this
# module: named here only as Any.
SharedPort = Any
SharedSession = Any
CallRelay = Any
#: The per-leg fields that are the only copy of their state (see the module doc): name,
#: array typecode. Each is `table.<name>` (numpy view) and `table.py_<name>` (a memoryview of
#: the same array.array, for scalar reads and writes).
STATE_FIELDS = (
    ("ssrc", "q"),  # our SSRC towards the leg's party
    ("seq", "q"),  # the last sequence number sent to it
    ("ts", "q"),  # the newest timestamp sent to it
    ("sent_at", "d"),  # when `ts` was sent
    ("src_ssrc", "q"),  # the source stream (the other party's SSRC) the offsets are for; -1 none
    ("seq_off", "q"),
    ("ts_off", "q"),
    ("started", "q"),  # 0/1: the stream has sent anything
    ("check_ts", "q"),  # 0/1: we generated audio, the next source packet must not go back in time
    ("source_at", "d"),  # when the other party's audio last reached this leg's party
    ("fwd", "q"),  # packets from this leg's party forwarded to the other
    # The recording clock of this leg's party's audio (rtp.relay.LegClock): the anchor of
    # SSRC `ck_ssrc` when `ck_has` (StreamClock's _Anchor fields).
    ("ck_has", "q"),
    ("ck_ssrc", "q"),
    ("ck_pos", "q"),  # anchor_pos
    ("ck_ats", "q"),  # anchor_ts
    ("ck_nts", "q"),  # newest_ts
    ("ck_nseq", "q"),  # newest_seq
    ("ck_late", "q"),  # late_run
    ("rbase", "q"),  # the recorder's timeline base (first position not final), kept by the relay
    ("rt0", "d"),  # the recorder's t0 (the answer)
    ("wcount", "q"),  # rows waiting for the recorder
    ("wfill", "q"),  # bytes of the leg's wbuf area their payloads use
    ("wpt", "q"),  # their payload type
)

_I64 = np.int64
_U64 = np.uint64
_STAMP = np.dtype([("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4")])  # RTP header bytes 2-11 (RFC 3550 §5.1)
_STAMP_ITEM = np.dtype(f"V{_STAMP.itemsize}")
#: Packets per leg held for the recorder between its flushes (one a second: 50 packets of
#: 20 ms); a leg that fills up hands them over early (`CallRelay.record`).
WAIT_ROWS = 56
#: The longest payload held for the recorder: 30 ms of G.711. A longer one is handed to the
#: recorder at once (`CallRelay.record`).
WAIT_WIDTH = 240
#: Payload bytes per leg area a row stands for: 20 ms of G.711. The payloads of a leg's rows
#: lie end to end in one area of WAIT_ROWS x this, so 10, 20 and 30 ms packets all fit
#: about a second. Why not a WAIT_WIDTH row each: a third of every 20 ms row was unused,
#: 9 KB a call (issue 17: memory per call).
WAIT_ROW_BYTES = 160


class RouteMap(dict):
    """A shared port's batch-lane routes (source key -> lane leg) that a whole batch can be
    looked up in at once.

    Why: a dict lookup per datagram was a tenth of the lane's Python time at 2,000 calls
    (bench/media_edge.py, line_profiler). Routes change when calls start, end, re-INVITE or
    leave the lane, far less often than batches arrive, so the sorted arrays behind
    `lookup` are rebuilt only on the first batch after a change."""

    __slots__ = ("_keys", "_legs", "_stale")

    def __init__(self) -> None:
        super().__init__()
        self._keys = np.zeros(0, dtype=_U64)
        self._legs = np.zeros(0, dtype=_I64)
        self._stale = False

    def __setitem__(self, key: int, leg: int) -> None:
        super().__setitem__(key, leg)
        self._stale = True

    def __delitem__(self, key: int) -> None:
        super().__delitem__(key)
        self._stale = True

    def pop(self, *args):  # noqa: ANN002, ANN201 - dict.pop's own signature
        self._stale = True
        return super().pop(*args)

    def clear(self) -> None:
        super().clear()
        self._stale = True

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Each source key's lane leg, -1 where it has none (int64 array)."""
        if self._stale:
            count = len(self)
            ks = np.fromiter(self.keys(), dtype=_U64, count=count)
            legs = np.fromiter(self.values(), dtype=_I64, count=count)
            order = np.argsort(ks)
            self._keys, self._legs = ks[order], legs[order]
            self._stale = False
        table = self._keys
        if not table.size:
            return np.full(keys.shape, -1, dtype=_I64)
        at = np.searchsorted(table, keys)
        at[at == table.size] = 0
        return np.where(table[at] == keys, self._legs[at], -1)


class LegTable:
    """Every call's per-leg state, as arrays indexed by leg number (see the module doc).

    A call (its `CallRelay`) holds slot s; its legs are 2s (channel 0) and 2s + 1. Arrays
    grow by doubling (readers go through the table, never keep an array); nothing here
    reads a clock."""

    def __init__(self, capacity: int = 256) -> None:
        self.relays: list[CallRelay | None] = []
        self.sessions: list[SharedSession | None] = []  # shared-port sessions (rtp.mux), by slot
        self._free: list[int] = []
        self.ports: dict[int, SharedPort] = {}
        self._size = 0
        self.wait_rows = WAIT_ROWS  # rows per leg (read once: tests shrink WAIT_ROWS)
        self.wait_bytes = WAIT_ROWS * WAIT_ROW_BYTES  # bytes of each leg's payload area
        self._alloc(max(capacity, 2))

    def _alloc(self, legs: int) -> None:
        old = self._size
        self._size = legs
        for name, code in STATE_FIELDS:
            # A memoryview of an array.array: an item read or write costs ~18 ns, the
            # array's own ~20 ns read and ~28 ns write (its write parses the value with a
            # format string); the per-packet path makes ~30 of them a packet.
            fresh = memoryview(array(code, bytes(8 * legs)))
            if old:
                fresh[:old] = getattr(self, "py_" + name)
            setattr(self, "py_" + name, fresh)
            setattr(self, name, np.frombuffer(fresh, dtype=np.float64 if code == "d" else _I64))

        def grow(name: str, dtype: type, shape: tuple[int, ...] = ()) -> None:
            fresh = np.zeros((legs, *shape), dtype=dtype)
            if old:
                fresh[:old] = getattr(self, name)
            setattr(self, name, fresh)

        # What the lane may do for packets from leg g (CallRelay.batchable, kept by refresh).
        grow("active", np.bool_)
        grow("record", np.bool_)
        for name in ("pt", "out_port"):
            grow(name, _I64)
        grow("dst", np.uint8, (16,))
        # Packets placed and not yet taken by the recorder (see "Recording" above): per leg,
        # `wcount` rows of position and payload length, and the payloads end to end.
        rows, area = self.wait_rows, self.wait_bytes
        grow("wpos", _I64, (rows,))
        grow("wlen", _I64, (rows,))
        grow("wbuf", np.uint8, (area,))
        # The same memory as whole items (a 16-byte sockaddr; WAIT_WIDTH bytes starting at
        # any byte of the payload areas, so items overlap) and flat rows: a batch's gather or
        # scatter of them is one copy per item, where indexing the 2-D and 3-D arrays walks
        # every byte (timeit, a batch of 400: 4.7 -> 0.5 us for the addresses, 13 -> 8 us for
        # the payloads). A payload is copied as a whole item, what follows it in its receive
        # slot included: that tail lands past the leg's `wfill`, where the next one goes.
        self.dst_items = self.dst.view(f"V{self.dst.shape[1]}").reshape(legs)
        self.wbuf_items = np.ndarray(shape=(legs * area - WAIT_WIDTH + 1,), dtype=f"V{WAIT_WIDTH}",
                                     buffer=self.wbuf, strides=(1,))
        self.wpos_flat = self.wpos.reshape(legs * rows)
        self.wlen_flat = self.wlen.reshape(legs * rows)
        # The same rows for the per-packet path (CallRelay.record): a memoryview's item and
        # slice assignment costs a fraction of a numpy scalar write.
        self.wpos_mv = memoryview(self.wpos_flat)
        self.wlen_mv = memoryview(self.wlen_flat)
        self.wbuf_mv = memoryview(self.wbuf.reshape(legs * area))
        if old:
            self.keys += [None] * (legs - old)
            self.sources += [None] * (legs - old)
            self.targets += [None] * (legs - old)
        else:
            self.keys: list[tuple[int, SharedPort] | None] = [None] * legs  # the lane's route, to undo it
            self.sources: list[tuple[str, int] | None] = [None] * legs  # the address keys[g] is for
            self.targets: list[tuple[str, int] | None] = [None] * legs  # where dst[g] points, as (ip, port)

    # -- calls ------------------------------------------------------------------------------

    def add(self, relay: CallRelay) -> int:
        """A slot for a new call's two legs (zeroed)."""
        if self._free:
            slot = self._free.pop()
            self.relays[slot] = relay
        else:
            slot = len(self.relays)
            self.relays.append(relay)
            self.sessions.append(None)
            if 2 * slot + 2 > self._size:
                self._alloc(2 * self._size)
        for g in (2 * slot, 2 * slot + 1):
            for name, _ in STATE_FIELDS:
                getattr(self, "py_" + name)[g] = 0
        return slot

    def attach(self, session: SharedSession) -> None:
        """A shared-port session's relay is in this table: the lane may take its packets."""
        self.sessions[session.relay.slot] = session

    def remove(self, slot: int) -> None:
        """The call is over (its relay closed, rows handed over): the slot may be reused."""
        relay = self.relays[slot]
        if relay is not None:
            relay.stats.freeze()
        for g in (2 * slot, 2 * slot + 1):
            self._deactivate(g)
        self.relays[slot] = None
        self.sessions[slot] = None
        self._free.append(slot)

    def _deactivate(self, g: int) -> None:
        self.active[g] = False
        route = self.keys[g]
        if route is not None:
            key, port = route
            if port.fast_routes.get(key) == g:
                del port.fast_routes[key]
            self.keys[g] = None

    def refresh(self, session: SharedSession, now: float) -> None:
        """What the lane may take of this call's packets now (after anything touched it):
        each leg's route, destination and payload type while `CallRelay.batchable`. No
        stream or clock state is copied: it lives here."""
        relay = session.relay
        g0 = 2 * relay.slot
        for channel in (0, 1):
            g = g0 + channel
            lane = None if session.closed else relay.batchable(channel, now)
            if lane is None:
                self._deactivate(g)
                continue
            source, payload_type, target, record = lane
            port = session.port_of(channel)
            route = self.keys[g]
            # An IPv6 source's key is asked for each time: a route that went and came back (a
            # re-INVITE naming the same address) interned it anew (rtp.source_keys).
            key = (route[0] if route is not None and self.sources[g] == source and not port.mux.ipv6
                   else port.key_of(source))
            self.sources[g] = source
            # An address two calls share on this port: dropped (rtp.mux); or an IPv6 source no
            # route holds (rtp.source_keys.NOWHERE: the relay decides each of its packets).
            if key in port.conflicts or key == NOWHERE:
                self._deactivate(g)
                continue
            if route != (key, port):
                self._deactivate(g)
                port.fast_routes[key] = g
                self.keys[g] = (key, port)
            self.active[g] = True
            self.record[g] = record
            self.pt[g] = payload_type
            out_port = session.port_of(1 - channel)
            self.out_port[g] = out_port.ident
            if out_port.mux.ipv6:
                # Only per-call ports are IPv6: a port each, so _take sends with sendto to
                # `targets` and never needs dst's sockaddr_in.
                self.dst[g] = 0
            else:
                self.dst[g] = np.frombuffer(out_port.mux.sockaddr(target), np.uint8)
            self.targets[g] = target

    # -- the batch ----------------------------------------------------------------------------

    def forward(self, rows: np.ndarray, lens: list[int] | np.ndarray,
                legs: list[int] | np.ndarray, now: float) -> list[int]:
        """Forward (and hand to recorders) every packet of the batch the lane can take;
        returns the indices of the others, in arrival order, for `CallRelay.receive`.

        `rows` is the receive buffer as (n, slot) bytes (C-contiguous: packets are re-stamped
        and sent from it; slot at least 12 + WAIT_WIDTH: a recorded payload is copied as
        a whole WAIT_WIDTH item), `lens` the datagrams' lengths, `legs` the lane's leg for
        each packet's source (-1: none). A leg with several packets in the batch (we fell
        behind, or the network bunched them) is taken in rounds, its k-th packet in round
        k, so each round sees the state the previous one left; once one of a leg's packets
        needs `receive`, so do all its later ones, in order."""
        n = len(legs)
        g = np.asarray(legs, dtype=_I64)
        cand = np.flatnonzero(g >= 0)
        if cand.size == 0:
            return list(range(n))
        size = np.asarray(lens, dtype=_I64)
        head = rows[:, :12]
        b0 = head[:, 0]
        pt = (head[:, 1] & 0x7F).astype(_I64)
        seq = (head[:, 2].astype(_I64) << 8) | head[:, 3]
        ts = np.ascontiguousarray(head[:, 4:8]).view(">u4")[:, 0].astype(_I64)
        ssrc = np.ascontiguousarray(head[:, 8:12]).view(">u4")[:, 0].astype(_I64)
        plain = (b0 == 0x80) & (size > 12) & (size <= MAX_PACKET_SIZE)
        gc = g[cand]
        order = np.argsort(gc, kind="stable")
        sorted_legs = gc[order]
        first = np.ones(sorted_legs.size, dtype=np.bool_)
        first[1:] = sorted_legs[1:] != sorted_legs[:-1]
        if first.all():  # the usual batch: each leg once
            rounds = [cand]
        else:
            at = np.arange(sorted_legs.size)
            rank = np.empty_like(at)
            rank[order] = at - np.maximum.accumulate(np.where(first, at, 0))
            rounds = [cand[rank == r] for r in range(int(rank.max()) + 1)]
        taken = np.zeros(n, dtype=np.bool_)
        tainted: set[int] = set()
        for idx in rounds:
            if tainted:
                idx = idx[[leg not in tainted for leg in g[idx].tolist()]]
                if idx.size == 0:
                    continue
            gi = g[idx]
            oi = gi ^ 1  # the stream towards the other party
            out_seq = (seq[idx] + self.seq_off[oi]) & 0xFFFF
            step = ((out_seq - self.seq[oi] + 0x8000) & 0xFFFF) - 0x8000
            ok = (
                plain[idx]
                & self.active[gi]
                & (pt[idx] == self.pt[gi])
                & (ssrc[idx] == self.src_ssrc[oi])
                & (ssrc[idx] != self.ssrc[gi])
                & (step > 0)
                & (step <= MAX_DROPOUT)  # in order, or after a gap (OutStream.map)
            )
            if not ok.all():
                tainted.update(gi[~ok].tolist())
                if not ok.any():
                    continue
            fast = idx[ok]
            self._take(fast, out_seq[ok], rows, g, size, pt, seq, ts, ssrc, now)
            taken[fast] = True
        return np.flatnonzero(~taken).tolist()

    def _take(self, fast: np.ndarray, seq_f: np.ndarray, rows: np.ndarray, g: np.ndarray, size: np.ndarray,
              pt: np.ndarray, seq: np.ndarray, ts: np.ndarray, ssrc: np.ndarray, now: float) -> None:
        """Forward and record packets `fast` (distinct legs, each the lane's to take)."""
        gf = g[fast]
        of = gf ^ 1  # the streams towards the other parties
        ts_f = (ts[fast] + self.ts_off[of]) & 0xFFFFFFFF
        newer = ((ts_f - self.ts[of]) & 0xFFFFFFFF) < 0x80000000
        self.seq[of] = seq_f
        on = of[newer]
        self.ts[on] = ts_f[newer]
        self.sent_at[on] = now
        self.source_at[of] = now
        self.fwd[gf] += 1
        # Re-stamp in the receive buffer itself (header bytes 2-11: our sequence number,
        # timestamp and SSRC, big-endian) and send from there: no copy of the packets.
        stamp = np.empty(fast.size, dtype=_STAMP)
        stamp["seq"] = seq_f
        stamp["ts"] = ts_f
        stamp["ssrc"] = self.ssrc[of]
        rows[:, 2:12].view(_STAMP_ITEM)[fast, 0] = stamp.view(_STAMP_ITEM)  # whole items: one copy each
        size_f = size[fast]
        ports = self.out_port[gf]
        first = int(ports[0])
        port_list = ports.tolist()
        if len(port_list) > 1 and (ports == first).all():
            self.ports[first].mux.send_rows(rows, fast, size_f, self.dst_items[gf])
        elif len(set(port_list)) == len(port_list):
            # A port each (per-call ports, rtp.mux SharedPorts.dedicated; or a lone packet):
            # one sendto each, straight from the row, without numpy's per-call cost.
            flat = memoryview(rows.reshape(-1))
            stride = rows.strides[0]
            by_ident, targets = self.ports, self.targets
            for ident, k, length, leg in zip(port_list, fast.tolist(), size_f.tolist(), gf.tolist()):
                at = k * stride
                by_ident[ident].mux.send_one(flat[at : at + length], targets[leg])
        else:  # legs of several ports: each port's packets leave from it, in arrival order
            order = np.argsort(ports, kind="stable")
            by_port = ports[order]
            cuts = [0, *(np.flatnonzero(by_port[1:] != by_port[:-1]) + 1).tolist(), order.size]
            picked, sizes, dst = fast[order], size_f[order], self.dst_items[gf[order]]
            for a, b in zip(cuts, cuts[1:]):
                self.ports[int(by_port[a])].mux.send_rows(rows, picked[a:b], sizes[a:b], dst[a:b])
        # The recorder takes lane packets as receive() gives them: position now, decode at
        # flush. Where the leg's recording clock has the plain case (newer, in place,
        # not late: StreamClock.position's arithmetic), the position is computed here for
        # the whole batch and the payload copied into the leg's area (the relay hands them
        # to the recorder: CallRelay.deliver_audio).
        rec = self.record[gf]
        if rec.any():
            r = np.flatnonzero(rec)
            gr = gf[r]
            kr = fast[r]
            seq_r = seq[kr]
            ts_r = ts[kr]
            ssrc_r = ssrc[kr]
            n_r = size[kr] - 12
            newest = self.ck_nts[gr]
            ts_ext = newest + (((ts_r - newest) + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            pos = self.ck_pos[gr] + (ts_ext - self.ck_ats[gr])
            arrival = np.rint((now - self.rt0[gr]) * SAMPLE_RATE).astype(_I64)
            drift = pos - arrival
            step = (seq_r - self.ck_nseq[gr]) & 0xFFFF
            base = self.rbase[gr]
            # A newer packet too late to place (we or the network fell behind) is the clock's
            # `late_run` case: placed (the timeline drops and counts it) unless this makes a
            # whole LATE_RUN of them, which re-anchors: that one goes to CallRelay.record.
            late = pos < base
            late_run = np.where(late, self.ck_late[gr] + n_r, 0)
            count = self.wcount[gr]
            fill = self.wfill[gr]
            placed = (
                (self.ck_has[gr] != 0)
                & (self.ck_ssrc[gr] == ssrc_r)
                & (step >= 1)
                & (step < SEQ_NEWER_WINDOW)
                & (drift <= RESYNC_SAMPLES)
                & (drift >= -RESYNC_SAMPLES)
                & (late_run < LATE_RUN_SAMPLES)
                & (pos + n_r - base <= MAX_PENDING_FRAMES)
                & (n_r <= WAIT_WIDTH)
                & (count < self.wait_rows)
                & (fill + WAIT_WIDTH <= self.wait_bytes)  # the whole item fits in the leg's area
                & ((count == 0) | (self.wpt[gr] == pt[kr]))
            )
            gp = gr[placed]
            kp = kr[placed]
            self.ck_nseq[gp] = seq_r[placed]
            self.ck_nts[gp] = ts_ext[placed]
            self.ck_late[gp] = late_run[placed]
            self.wpt[gp] = pt[kp]
            at = count[placed]
            flat = gp * self.wait_rows + at
            self.wpos_flat[flat] = pos[placed]
            self.wlen_flat[flat] = n_r[placed]
            if kp.size:  # whole items: the payload and what follows it in the slot
                fill_p = fill[placed]
                self.wbuf_items[gp * self.wait_bytes + fill_p] = rows[:, 12 : 12 + WAIT_WIDTH].view(
                    self.wbuf_items.dtype)[kp, 0]
                self.wfill[gp] = fill_p + n_r[placed]
            self.wcount[gp] = at + 1
            if not placed.all():  # the clock's own rules (a resync, a late run, a new SSRC, full rows)
                for j in np.flatnonzero(~placed).tolist():
                    k = int(kr[j])
                    leg = int(gr[j])
                    relay = self.relays[leg >> 1]
                    if relay is not None:
                        relay.record(leg & 1, int(ssrc[k]), int(seq[k]), int(ts[k]), rows[k, 12 : int(size[k])].tobytes(),
                                     int(pt[k]), now)

FastTable = LegTable  # the name rtp.mux and its tests knew
