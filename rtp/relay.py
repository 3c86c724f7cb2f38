"""The per-call media relay, sans-IO: datagrams and `now` in, datagrams to send out.

One `CallRelay` sits between the call's two parties (legs 0 and 1, `Call.parties`
order: leg 0 is recording channel 1, the external party or caller). For every packet it:

1. latches: a party's packets are accepted from its SDP address, or, during the first
   LATCH_WINDOW seconds after its SDP, from any port at its signalling IP (symmetric RTP
   behind NAT, the address it then answers to); anyone else is a counted drop, so no
   stranger's audio bleeds into a call;
2. forwards audio to the other party under our own SSRC with continuous sequence numbers
   and timestamps (`OutStream`), so packets we inject (prompts, regenerated digits) fit
   in the stream the phone already follows (RFC 3550 §5.1, §8.2);
3. runs RFC 4733 key presses of "user" parties through the *1 machine (rtp/feature.py):
   swallowed, forwarded intact, or regenerated as a fresh event train when a held `*`
   is passed on late;
4. hands the G.711 payload, with its own SSRC/sequence/timestamp/arrival, to the
   recorder (`add_g711`), which places it on the call timeline by timestamp;
5. mixes a playing prompt into the audio heading to the user who pressed *1, and makes
   its own 20 ms packets when the other party sends none.

The asyncio adapters (rtp/engine.py per-call sockets, rtp/mux.py shared ports) own sockets
and the clock and call `receive`, `receive_rtcp`, `dtmf` and, every TICK_INTERVAL, `tick`.
Each leg's stream state lives in a `rtp.fastpath.LegTable` row (the media core's one
table; a relay made alone gets a table of its own): `TableStream` and `Leg` read and write
it in place, and on shared ports the batch lane does the same for the common case
(`batchable` says when), so there is one copy and nothing to hand back.
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from rtp.call import Call, MediaEndpoint, Party
from rtp import g711
from rtp.events import EventDetector, digit_train
from rtp.fastpath import WAIT_WIDTH, LegTable
from rtp.feature import FEATURE_TIMEOUT, FeatureMachine, Forward, Release, State, Toggle
from rtp.inband import InbandDetector
from rtp.packet import MAX_PACKET_SIZE, RtpPacket
from rtp.prompts import Prompts
from rtp.sequence import MAX_DROPOUT, MAX_MISORDER
from rtp.timeline import LATE_RUN_SAMPLES, RESYNC_SAMPLES, SEQ_NEWER_WINDOW, StreamClock, _Anchor

if TYPE_CHECKING:
    from rtp.disk_writer import DiskWriter

LATCH_WINDOW = 10.0  # seconds after a party's SDP during which its signalling IP may latch: covers ringing-to-first-packet
TICK_INTERVAL = 0.02  # the relay's own clock: one G.711 packet time (RFC 3551 §4.5 default ptime)
FLUSH_INTERVAL = 1.0  # recorder flush period: at most a second of audio lost on a crash
SOURCE_SILENT = 0.06  # three packet times without audio from the other party: play the prompt from our own clock
SAMPLE_RATE = 8000  # G.711 (RFC 3551 §4.5.14)
FRAME_SAMPLES = 160  # samples in one 20 ms packet
MAX_DECISIONS = 16  # per-leg remembered forward/swallow decisions, by event: a few key presses back
PROMPT_DUCK_SHIFT = 1  # while a prompt plays, the other party's audio is halved (-6 dB) under it
PAUSE_GRACE = 0.2  # after *1 pauses, late packets of the recorded span still reach the recorder (its jitter window)

Datagram = tuple[int, bytes, tuple[str, int]]  # (leg it goes to, bytes, address)

_HEADER = struct.Struct("!BBHII")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


class RecorderLike(Protocol):
    """What the relay needs of rtp.recorder.Recorder (its upper interface)."""

    recording: bool
    timeline_base: int  # the first timeline position not yet final: an older one is late

    def place_g711(self, channel: int, payload_type: int, positions: np.ndarray, lengths: np.ndarray,
                   payloads: np.ndarray) -> None: ...

    def set_recording(self, on: bool, now: float, by: str | None) -> None: ...

    def flush(self, now: float) -> None: ...

    def close(self, now: float) -> None: ...


RecorderFactory = Callable[[Call, float], RecorderLike]  # (call, t0) -> recorder


def recorder_factory(directory: Path, pause_mode: str, *, writer: DiskWriter | None = None,
                     on_finalised: Callable[[Path], None] | None = None) -> RecorderFactory:
    """The production factory: rtp.recorder.Recorder under `directory`, writing through
    `writer` (rtp.disk_writer.DiskWriter), `on_finalised(sidecar_path)` called when each
    recording is final and durable."""
    from rtp.recorder import Recorder  # the recorder module is only needed once a call is answered

    def make(call: Call, t0: float) -> RecorderLike:
        return Recorder(Path(directory), call, pause_mode, t0, writer=writer, on_finalised=on_finalised)

    return make


class Lane(NamedTuple):
    """What the batch lane needs to route a leg's packets (`CallRelay.batchable`); the stream
    state itself is in the leg table, shared, not in here."""

    source: tuple[str, int]  # the only source whose packets it may take (the latched one)
    payload_type: int  # the G.711 type both parties use
    target: tuple[str, int]  # where the other party's packets go
    record: bool  # the recorder takes this leg's audio now


class RelayStats:
    """Counters: drops are counted, never raised (style.md §4). `forwarded` is the leg
    table's count (the batch lane adds to it too)."""

    __slots__ = ("malformed", "oversize", "unlatched", "no_target", "swallowed", "injected", "rtcp", "_table", "_g",
                 "_frozen")
    _FIELDS = ("forwarded", "malformed", "oversize", "unlatched", "no_target", "swallowed", "injected", "rtcp")

    def __init__(self, table: LegTable, slot: int) -> None:
        self._table = table
        self._g = 2 * slot
        self.malformed = 0  # not RTP v2, truncated, bad padding, oversize
        self.oversize = 0  # of those, longer than MAX_PACKET_SIZE
        self.unlatched = 0  # from an address that is not the party's: RTP bleed refused
        self.no_target = 0  # nowhere to send (no SDP yet, hold, no telephone-event at the far end)
        self.swallowed = 0  # telephone-event packets of *1 not passed on
        self.injected = 0  # packets we made: prompts and regenerated digits
        self.rtcp = 0
        self._frozen = -1

    @property
    def forwarded(self) -> int:
        if self._frozen >= 0:
            return self._frozen
        fwd = self._table.py_fwd
        return fwd[self._g] + fwd[self._g + 1]

    def freeze(self) -> None:
        """The call's table slot is being freed (LegTable.remove): keep the count from here."""
        self._frozen = self.forwarded

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self._FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RelayStats) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return "RelayStats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


class OutStream:
    """Our RTP stream towards one party: own SSRC, continuous sequence and timestamp.

    Forwarded packets keep their sender's spacing (gaps stay gaps, so the phone's
    loss concealment still works) through two offsets; the offsets are re-based when
    the source changes SSRC or jumps (RFC 3550 A.1 MAX_DROPOUT/MAX_MISORDER), and the
    sequence offset grows by every packet we insert ourselves.
    """

    __slots__ = ("ssrc", "seq", "ts", "sent_at", "src_ssrc", "seq_offset", "ts_offset", "started", "check_ts")

    def __init__(self, ssrc: int, seq: int, ts: int) -> None:
        self.ssrc = ssrc
        self.seq = seq  # the highest sequence number sent so far
        self.ts = ts  # the newest audio timestamp sent so far
        self.sent_at = 0.0  # when `ts` was sent
        self.src_ssrc = -1  # the source stream the offsets are for
        self.seq_offset = 0
        self.ts_offset = 0
        self.started = False
        self.check_ts = False  # we generated audio: the next source packet must not go back in time

    def map(self, src_ssrc: int, seq: int, ts: int, now: float) -> tuple[int, int, int]:
        """Our sequence number, timestamp and SSRC: the header fields a forwarded source
        packet is stamped with."""
        if src_ssrc != self.src_ssrc:
            self._rebase(src_ssrc, seq, ts, now)
        out_seq = (seq + self.seq_offset) & 0xFFFF
        step = ((out_seq - self.seq + 0x8000) & 0xFFFF) - 0x8000
        if step > MAX_DROPOUT or step < -MAX_MISORDER:
            self._rebase(src_ssrc, seq, ts, now)
            out_seq = (seq + self.seq_offset) & 0xFFFF
            step = 1
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        if self.check_ts:
            self.check_ts = False
            if (out_ts - self.ts) & 0xFFFFFFFF >= 0x80000000 or out_ts == self.ts:
                shift = self._elapsed_samples(now) - ((out_ts - self.ts) & 0xFFFFFFFF)
                self.ts_offset += shift
                out_ts = (out_ts + shift) & 0xFFFFFFFF
        if step > 0:
            self.seq = out_seq
            if (out_ts - self.ts) & 0xFFFFFFFF < 0x80000000:
                self.ts = out_ts
                self.sent_at = now
        return out_seq, out_ts, self.ssrc

    def skip(self, src_ssrc: int, seq: int) -> None:
        """A source packet we swallow: close its sequence number gap, it is no loss."""
        if src_ssrc == self.src_ssrc and (seq + self.seq_offset) & 0xFFFF == (self.seq + 1) & 0xFFFF:
            self.seq_offset -= 1

    def next_audio(self, now: float) -> tuple[int, int]:
        """Sequence number and timestamp for one packet of our own audio (a prompt)."""
        if not self.started:
            self._start(now)
            ts = self.ts
        else:
            ts = (self.ts + self._elapsed_samples(now)) & 0xFFFFFFFF
        self.seq = (self.seq + 1) & 0xFFFF
        self.seq_offset += 1
        self.ts = ts
        self.sent_at = now
        self.check_ts = True
        return self.seq, ts

    def next_event(self, now: float, count: int) -> tuple[int, int]:
        """First sequence number and the timestamp for `count` packets of one new event.

        The event starts now (RFC 4733 §2.3.1); audio timestamps are left alone, since
        an event's packets overlap the audio of the same moment.
        """
        if not self.started:
            self._start(now)
            ts = self.ts
        else:
            ts = (self.ts + self._elapsed_samples(now)) & 0xFFFFFFFF
        first = (self.seq + 1) & 0xFFFF
        self.seq = (self.seq + count) & 0xFFFF
        self.seq_offset += count
        return first, ts

    def _elapsed_samples(self, now: float) -> int:
        frames = round((now - self.sent_at) / TICK_INTERVAL)
        return FRAME_SAMPLES * (frames if frames > 1 else 1)

    def _start(self, now: float) -> None:
        self.started = True
        self.sent_at = now

    def _rebase(self, src_ssrc: int, seq: int, ts: int, now: float) -> None:
        if self.started:
            target_seq = self.seq + 1
            target_ts = self.ts + self._elapsed_samples(now)
        else:
            self.started = True
            target_seq = self.seq
            target_ts = self.ts
        self.src_ssrc = src_ssrc
        self.seq_offset = (target_seq - seq) & 0xFFFF
        self.ts_offset = (target_ts - ts) & 0xFFFFFFFF
        self.check_ts = False
        self.seq = (target_seq - 1) & 0xFFFF  # so this packet counts as the next one
        self.ts = target_ts & 0xFFFFFFFF
        self.sent_at = now


def _table_field(name: str) -> property:
    """A TableStream attribute that is the leg table's `py_<name>` array at the stream's row.
    (Written out per field by exec: a getattr by name per access cost a third more.)"""
    namespace: dict = {}
    exec(  # noqa: S102 - a fixed template, no outside input
        f"def get(self):\n    return self._t.py_{name}[self._i]\n"
        f"def put(self, value):\n    self._t.py_{name}[self._i] = value\n",
        namespace,
    )
    return property(namespace["get"], namespace["put"])


class TableStream(OutStream):
    """`OutStream` whose state is a leg table row (the only copy; see rtp.fastpath). The
    rules are OutStream's own code: the plain class is the oracle the tests compare the
    batch lane against, this one is what production runs."""

    __slots__ = ("_t", "_i")

    ssrc = _table_field("ssrc")
    seq = _table_field("seq")
    ts = _table_field("ts")
    sent_at = _table_field("sent_at")
    src_ssrc = _table_field("src_ssrc")
    seq_offset = _table_field("seq_off")
    ts_offset = _table_field("ts_off")
    started = _table_field("started")  # 0/1 in the table: truthiness is all OutStream asks
    check_ts = _table_field("check_ts")

    def __init__(self, table: LegTable, index: int, ssrc: int, seq: int, ts: int) -> None:  # noqa: D107
        self._t = table
        self._i = index
        super().__init__(ssrc, seq, ts)

    def map(self, src_ssrc: int, seq: int, ts: int, now: float) -> tuple[int, int, int]:
        """`OutStream.map`. Its common case (the same source, within the reorder window, no
        time check pending: every packet but a stream's first and a jump) is written out on
        the row's arrays; the rest is OutStream's own code through the properties.

        Why: each property is a Python call (~60 ns, against ~20 ns for the array item), and
        the readable code reads or writes ten of them a packet (the per-packet path was ~30%
        slower than with the stream's own slots; tests/test_fastpath.py compares the result
        with plain `OutStream`s). Who still comes here on every packet, though every IPv4
        port's common packet is the batch lane's: a leg the lane declines for the whole
        call (`batchable`: in-band *1 detection for a phone without telephone-event,
        transcoding PCMU <-> PCMA, a prompt playing, comfort noise) and, on a
        system without recvmmsg, `rtp.engine.MediaSession`."""
        t = self._t
        i = self._i
        if t.py_src_ssrc[i] == src_ssrc and not t.py_check_ts[i]:
            seqs = t.py_seq
            out_seq = (seq + t.py_seq_off[i]) & 0xFFFF
            step = ((out_seq - seqs[i] + 0x8000) & 0xFFFF) - 0x8000
            if -MAX_MISORDER <= step <= MAX_DROPOUT:
                out_ts = (ts + t.py_ts_off[i]) & 0xFFFFFFFF
                if step > 0:
                    seqs[i] = out_seq
                    tss = t.py_ts
                    if (out_ts - tss[i]) & 0xFFFFFFFF < 0x80000000:
                        tss[i] = out_ts
                        t.py_sent_at[i] = now
                return out_seq, out_ts, t.py_ssrc[i]
        return OutStream.map(self, src_ssrc, seq, ts, now)


class TableAnchor(_Anchor):
    """`StreamClock`'s anchor for a leg's current SSRC, stored in the leg table's `ck_*`
    fields (the batch lane advances the same numbers)."""

    anchor_pos = _table_field("ck_pos")
    anchor_ts = _table_field("ck_ats")
    newest_ts = _table_field("ck_nts")
    newest_seq = _table_field("ck_nseq")
    late_run = _table_field("ck_late")

    def __init__(self, table: LegTable, index: int) -> None:  # noqa: D107 - no dataclass init: the row is the state
        self._t = table
        self._i = index


class LegClock(StreamClock):
    """The recording clock of one leg's audio: `StreamClock`'s rules, with the anchor of the
    SSRC it placed last in the leg table (so the batch lane places that SSRC's plain
    packets itself) and older SSRCs' anchors as plain objects (moved, never copied twice)."""

    def __init__(self, table: LegTable, index: int) -> None:
        super().__init__()
        self._row = TableAnchor(table, index)
        self._t = table
        self._i = index

    def position(self, ssrc: int, seq: int, timestamp: int, length: int, arrival_pos: int, horizon: int) -> int:
        t, i = self._t, self._i
        if not t.py_ck_has[i] or t.py_ck_ssrc[i] != ssrc:
            self._switch(ssrc)
        pos = super().position(ssrc, seq, timestamp, length, arrival_pos, horizon)
        if not t.py_ck_has[i]:  # the SSRC's first packet made its anchor: into the row
            self._adopt(ssrc)
        return pos

    def _switch(self, ssrc: int) -> None:
        """Make `ssrc` the row's SSRC: the current one's anchor out to a plain object, `ssrc`'s
        (if it has one) into the row; the anchors' order (oldest first) is kept."""
        t, i, row, anchors = self._t, self._i, self._row, self._anchors
        if t.py_ck_has[i]:
            old = t.py_ck_ssrc[i]
            if anchors.get(old) is row:
                anchors[old] = _Anchor(row.anchor_pos, row.anchor_ts, row.newest_ts, row.newest_seq, row.late_run)
        t.py_ck_has[i] = 0
        t.py_ck_ssrc[i] = ssrc
        if ssrc in anchors:
            self._adopt(ssrc)

    def _adopt(self, ssrc: int) -> None:
        t, i, row, anchors = self._t, self._i, self._row, self._anchors
        anchor = anchors.get(ssrc)
        if anchor is None:
            return
        if anchor is not row:
            row.anchor_pos, row.anchor_ts, row.newest_ts = anchor.anchor_pos, anchor.anchor_ts, anchor.newest_ts
            row.newest_seq, row.late_run = anchor.newest_seq, anchor.late_run
            anchors[ssrc] = row
        t.py_ck_ssrc[i] = ssrc
        t.py_ck_has[i] = 1


class Leg:
    """One party: where its media comes from and goes to, and its key-press state."""

    __slots__ = (
        "index",
        "party",
        "endpoint",
        "remote",
        "latched",
        "latch_until",
        "rtcp_latched",
        "audio_pt",
        "dtmf_pt",
        "detector",
        "decisions",
        "feature",
        "inband",
        "out",
        "prompt",
        "prompt_pos",
        "gen_at",
        "_t",
        "row",
    )

    def __init__(self, index: int, party: Party, out: TableStream, feature_timeout: float) -> None:
        self._t = out._t
        self.row = out._i  # its row in the leg table (its stream, its party's clock and counters)
        self.index = index
        self.party = party
        self.endpoint: MediaEndpoint | None = None
        self.remote: tuple[str, int] | None = None  # the SDP address: accepted, and sent to until latched
        self.latched: tuple[str, int] | None = None  # where its packets really come from (and where we send)
        self.latch_until = 0.0
        self.rtcp_latched: tuple[str, int] | None = None
        self.audio_pt = -1
        self.dtmf_pt = -1
        self.detector = EventDetector()
        self.decisions: OrderedDict[int, bool] = OrderedDict()  # event key -> forward its packets?
        self.feature = FeatureMachine(enabled=False, timeout=feature_timeout)
        self.inband: InbandDetector | None = None
        self.out = out  # our stream towards this party
        self.prompt: np.ndarray | None = None  # playing towards this party
        self.prompt_pos = 0
        self.source_at = -1.0  # when the other party's audio last reached this party (leg table)
        self.gen_at = 0.0  # next generated prompt packet is due

    @property
    def source_at(self) -> float:
        return self._t.py_source_at[self.row]

    @source_at.setter
    def source_at(self, value: float) -> None:
        self._t.py_source_at[self.row] = value

    @property
    def target(self) -> tuple[str, int] | None:
        """Where our packets to this party go: nowhere on hold (RFC 3264 §8.4)."""
        if self.remote is None:
            return None
        return self.latched or self.remote

    @property
    def rtcp_target(self) -> tuple[str, int] | None:
        """RTCP goes to the RTP port + 1 (RFC 3550 §11), or where its RTCP came from."""
        if self.remote is None:
            return None
        if self.rtcp_latched is not None:
            return self.rtcp_latched
        host, port = self.latched or self.remote
        return (host, port + 1)


class CallRelay:
    """Media for one call: feed it datagrams, send what it returns (sans-IO)."""

    # Slots: with thousands of calls the per-packet attribute reads are cache misses; a
    # compact object without a __dict__ has fewer of them.
    __slots__ = (
        "call",
        "prompts",
        "make_recorder",
        "latch_window",
        "stats",
        "recorder",
        "record_grace_until",
        "answered_at",
        "next_flush",
        "busy",
        "legs",
        "table",
        "slot",
        "clocks",
    )

    def __init__(
        self,
        call: Call,
        prompts: Prompts,
        make_recorder: RecorderFactory | None,
        *,
        feature_timeout: float = FEATURE_TIMEOUT,
        latch_window: float = LATCH_WINDOW,
        ssrcs: tuple[int, int] | None = None,
        table: LegTable | None = None,
    ) -> None:
        self.call = call
        self.prompts = prompts
        self.make_recorder = make_recorder
        self.latch_window = latch_window
        # The leg table holds this call's stream state (the media core's, shared by every
        # call; alone, a table of its own). The owner frees the slot (LegTable.remove).
        self.table = table if table is not None else LegTable(capacity=2)
        self.slot = self.table.add(self)
        self.stats = RelayStats(self.table, self.slot)
        self.recorder: RecorderLike | None = None
        # After a pause, packets still in flight for the recorded span arrive for up to
        # the recorder's jitter window; they are kept (the recorder gates by timeline).
        self.record_grace_until = 0.0
        self.answered_at: float | None = None
        self.next_flush = float("inf")
        # True while a timer runs (a held `*`, a prompt): the owner must call `tick` every
        # TICK_INTERVAL. A plain attribute, set when one may start, re-checked by `tick`,
        # because the owner reads it for every call every 20 ms.
        self.busy = False
        if ssrcs is None:
            ssrcs = (secrets.randbits(32), secrets.randbits(32))  # RFC 3550 §8.1: random SSRC
        g0 = 2 * self.slot
        self.legs = tuple(
            Leg(
                i,
                call.parties[i],
                TableStream(self.table, g0 + i, ssrcs[i], secrets.randbits(16), secrets.randbits(32)),  # RFC 3550 §5.1
                feature_timeout,
            )
            for i in (0, 1)
        )
        # Each leg's recording clock (its audio's positions on the call timeline).
        self.clocks = (LegClock(self.table, g0), LegClock(self.table, g0 + 1))

    # -- signalling side -------------------------------------------------------------

    def set_media(self, channel: int, endpoint: MediaEndpoint, now: float) -> None:
        """A party's SDP (again on re-INVITE or hold); restarts latching when it moved."""
        leg = self.legs[channel]
        moved = leg.endpoint is None or (endpoint.remote, endpoint.signalling_ip) != (
            leg.endpoint.remote,
            leg.endpoint.signalling_ip,
        )
        leg.endpoint = endpoint
        leg.remote = endpoint.remote
        # Only G.711 is decoded (recorded, mixed, transcoded); any other codec is relayed untouched.
        leg.audio_pt = endpoint.payload_type if endpoint.payload_type in (g711.PCMU, g711.PCMA) else -2
        leg.dtmf_pt = endpoint.dtmf_payload_type if endpoint.dtmf_payload_type is not None else -1
        if moved:
            leg.latched = None
            leg.rtcp_latched = None
            leg.latch_until = now + self.latch_window
        self._arm_features()

    def answered(self, now: float) -> None:
        """The call is answered: the recording clock starts (t0 = now)."""
        if self.answered_at is not None:
            return
        self.answered_at = now
        call = self.call
        if call.recording_enabled and self.make_recorder is not None:
            self.recorder = self.make_recorder(call, now)
            self.next_flush = now + FLUSH_INTERVAL
            table, g0 = self.table, 2 * self.slot
            table.py_rt0[g0] = table.py_rt0[g0 + 1] = now
            self._note_base()
            if call.record_at_answer and not self.recorder.recording:
                self.recorder.set_recording(True, now, None)
        self._arm_features()

    def close(self, now: float) -> None:
        """The call ended: finalise the recording."""
        if self.recorder is not None:
            self.deliver_audio()
        recorder, self.recorder = self.recorder, None
        self.next_flush = float("inf")
        if recorder is not None:
            recorder.close(now)

    def _arm_features(self) -> None:
        """*1 works for "user" parties once answered, when the organisation records calls."""
        armed = self.recorder is not None
        for leg in self.legs:
            enabled = armed and leg.party.role == "user"
            leg.feature.enabled = enabled
            wants_inband = enabled and leg.endpoint is not None and leg.dtmf_pt < 0
            if wants_inband and leg.inband is None:
                leg.inband = InbandDetector()
            elif not wants_inband:
                leg.inband = None

    # -- media side ------------------------------------------------------------------

    def receive(self, channel: int, data: bytes, addr: tuple[str, int], now: float) -> list[Datagram]:
        """One RTP datagram from the party on `channel`; returns datagrams to send.

        The audio case is written inline, without helper calls: it is every packet of
        every call, and each Python call costs as much as the numpy decode.
        """
        stats = self.stats
        leg = self.legs[channel]
        if addr != leg.latched and not self._latch(leg, addr, now):
            stats.unlatched += 1
            return []
        if 12 < len(data) <= MAX_PACKET_SIZE and data[0] == 0x80:  # the common case: no padding, extension or CSRC
            b0, b1, seq, ts, ssrc = _unpack_header(data)
            rest = payload = data[12:]
        else:
            packet = RtpPacket.parse(data)
            if packet is None:
                stats.malformed += 1
                if len(data) > MAX_PACKET_SIZE:
                    stats.oversize += 1
                return []
            b0 = data[0]
            b1 = data[1]
            seq, ts, ssrc, payload = packet.sequence, packet.timestamp, packet.ssrc, packet.payload
            rest = data[12:]  # CSRCs, extension and padding are forwarded as they came
        if ssrc == self.table.py_ssrc[leg.row]:  # leg.out.ssrc, read on the row (a property costs ~4x)
            # RFC 3550 §8.2 collision: the party uses the SSRC we send it. We are the one
            # to move (a new random SSRC), so the phone never sees its own SSRC coming back.
            leg.out.ssrc = (ssrc + 1 + secrets.randbelow(0xFFFFFFFF)) & 0xFFFFFFFF
        pt = b1 & 0x7F
        other = self.legs[1 - channel]
        if pt != leg.audio_pt:
            if pt == leg.dtmf_pt:
                return self._event(leg, other, b0, b1, seq, ts, ssrc, payload, rest, now)
            return self._other(other, b0, b1, seq, ts, ssrc, rest, now)
        samples = None
        recorder = self.recorder
        if recorder is not None and (recorder.recording or now < self.record_grace_until):
            self.record(channel, ssrc, seq, ts, payload, pt, now)  # decoded at the recorder's flush, in one go
        if leg.inband is not None:
            self._inband(leg, samples if samples is not None else g711.decode(payload, pt), now)
        if other.remote is None:  # hold, or no SDP yet: nothing is sent (RFC 3264 §8.4)
            stats.no_target += 1
            return []
        target = other.latched or other.remote
        table = self.table
        table.py_source_at[other.row] = now  # other.source_at
        out_seq, out_ts, out_ssrc = other.out.map(ssrc, seq, ts, now)
        table.py_fwd[leg.row] += 1
        if other.prompt is None and other.audio_pt == pt:
            return [(other.index, _pack_header(b0, b1, out_seq, out_ts, out_ssrc) + rest, target)]
        # Mix a playing prompt in, or transcode PCMU <-> PCMA: decode, add, clip, re-encode.
        if samples is None:
            samples = g711.decode(payload, pt)
        if other.prompt is not None:
            samples = self._mix(other, samples)
        body = g711.encode(samples, other.audio_pt)
        return [(other.index, _pack_header(0x80, (b1 & 0x80) | other.audio_pt, out_seq, out_ts, out_ssrc) + body, target)]

    def _other(self, other: Leg, b0: int, b1: int, seq: int, ts: int, ssrc: int, rest: bytes, now: float) -> list[Datagram]:
        """Any other payload type (comfort noise, RFC 3389; a non-G.711 codec): relayed untouched but the header."""
        target = other.target
        if target is None:
            self.stats.no_target += 1
            return []
        out_seq, out_ts, out_ssrc = other.out.map(ssrc, seq, ts, now)
        self.table.py_fwd[2 * self.slot + 1 - other.index] += 1
        return [(other.index, _pack_header(b0, b1, out_seq, out_ts, out_ssrc) + rest, target)]

    def _inband(self, leg: Leg, samples: np.ndarray, now: float) -> None:
        """Tones in the audio of a phone without telephone-event: they still travel in the
        audio (nothing to swallow or regenerate), so only a completed *1 has an effect."""
        assert leg.inband is not None
        for digit in leg.inband.feed(samples):
            self.busy = True
            for action in leg.feature.digit(digit, now):
                if isinstance(action, Toggle):
                    self._toggle(leg, now)

    def _mix(self, leg: Leg, samples: np.ndarray) -> np.ndarray:
        """The next stretch of the prompt playing to `leg`, added to `samples` and clipped."""
        prompt = leg.prompt
        assert prompt is not None
        start = leg.prompt_pos
        piece = prompt[start : start + len(samples)]
        leg.prompt_pos = start + len(samples)
        if leg.prompt_pos >= len(prompt):
            leg.prompt = None
        # The other party is ducked by PROMPT_DUCK_SHIFT (6 dB) under the prompt, so the
        # presser hears it clearly over a loud line but still hears the other party.
        mixed = samples.astype(np.int32)
        mixed[: len(piece)] >>= PROMPT_DUCK_SHIFT
        mixed[: len(piece)] += piece
        return np.clip(mixed, -32768, 32767).astype(np.int16)

    def _event(
        self,
        leg: Leg,
        other: Leg,
        b0: int,
        b1: int,
        seq: int,
        ts: int,
        ssrc: int,
        payload: bytes,
        rest: bytes,
        now: float,
    ) -> list[Datagram]:
        out: list[Datagram] = []
        press = leg.detector.feed(ts, bool(b1 & 0x80), payload)
        if press is not None:
            forward = True
            if press.digit is not None and leg.feature.enabled:
                forward = False
                self.busy = True
                for action in leg.feature.digit(press.digit, now):
                    if isinstance(action, Forward):
                        forward = True
                    elif isinstance(action, Release):
                        out.extend(self._synthesise(other, action.digit, now))
                    else:
                        self._toggle(leg, now)
            decisions = leg.decisions
            decisions[press.timestamp] = forward
            if len(decisions) > MAX_DECISIONS:
                decisions.popitem(last=False)
        key = leg.detector.key_of(ts)
        if key is not None and not leg.decisions.get(key, True):
            self.stats.swallowed += 1
            other.out.skip(ssrc, seq)
            return out
        target = other.target
        if target is None or other.dtmf_pt < 0:
            self.stats.no_target += 1
            return out
        out_seq, out_ts, out_ssrc = other.out.map(ssrc, seq, ts, now)
        self.table.py_fwd[2 * self.slot + leg.index] += 1
        # Kept intact but for the header; the payload type is the one the far end negotiated.
        out.append(
            (
                other.index,
                _pack_header(b0, (b1 & 0x80) | other.dtmf_pt, out_seq, out_ts, out_ssrc) + rest,
                target,
            )
        )
        return out

    # -- recording feed (one path: the batch lane places into the same rows) ---------------

    def record(self, channel: int, ssrc: int, seq: int, ts: int, payload: bytes, payload_type: int, now: float) -> None:
        """One G.711 packet of `channel`'s party for the recorder: placed on the call timeline
        by the leg's clock now (`StreamClock.position`), held in the leg table's rows, and
        handed to the recorder with the others before its flush (`deliver_audio`)."""
        n = len(payload)
        if n == 0:
            return
        table = self.table
        g = 2 * self.slot + channel
        arrival = round((now - table.py_rt0[g]) * SAMPLE_RATE)
        horizon = table.py_rbase[g]
        pos = None
        if table.py_ck_ssrc[g] == ssrc and table.py_ck_has[g]:
            # The leg clock's (`LegClock`) common case, the SSRC whose anchor is the row's,
            # written out on the row's arrays: `StreamClock.position`'s arithmetic, as the
            # batch lane's (rtp.fastpath). Through the clock's `TableAnchor` properties it
            # cost ~60 ns a field and a call (tests/test_fastpath.py compares the positions
            # and the WAV with the recorder's own `StreamClock`s).
            newest = table.py_ck_nts[g]
            ext_ts = newest + (((ts - newest) + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            at_ts = table.py_ck_pos[g] + (ext_ts - table.py_ck_ats[g])
            step = (seq - table.py_ck_nseq[g]) & 0xFFFF
            if step == 0 or step >= SEQ_NEWER_WINDOW:
                pos = at_ts  # a duplicate or a reordered packet: its timestamp decides
            elif -RESYNC_SAMPLES <= at_ts - arrival <= RESYNC_SAMPLES:
                late_run = 0 if at_ts >= horizon else table.py_ck_late[g] + n
                if late_run < LATE_RUN_SAMPLES:  # else a late run's resync: the clock's own code
                    table.py_ck_nseq[g] = seq & 0xFFFF
                    table.py_ck_late[g] = late_run
                    table.py_ck_nts[g] = ext_ts
                    pos = at_ts
        if pos is None:  # a new SSRC, a resync: the clock's rules in full
            pos = self.clocks[channel].position(ssrc, seq & 0xFFFF, ts & 0xFFFFFFFF, n, arrival, horizon)
        count = table.py_wcount[g]
        fill = table.py_wfill[g]
        if count and (count >= table.wait_rows or table.py_wpt[g] != payload_type or n > WAIT_WIDTH
                      or fill + n > table.wait_bytes):
            self._deliver(channel)  # full (rows or area), another payload type, or a payload longer than a row
            count = fill = 0
        if n > WAIT_WIDTH:
            assert self.recorder is not None
            self.recorder.place_g711(channel, payload_type, np.array([pos]), np.array([n]),
                                     np.frombuffer(payload, np.uint8))
            return
        flat = g * table.wait_rows + count
        table.wpos_mv[flat] = pos
        table.wlen_mv[flat] = n
        at = g * table.wait_bytes + fill
        table.wbuf_mv[at : at + n] = payload
        if not count:
            table.py_wpt[g] = payload_type  # (the rows' one payload type: see above)
        table.py_wfill[g] = fill + n
        table.py_wcount[g] = count + 1

    def deliver_audio(self) -> None:
        """Hand the recorder every packet placed for it and not yet taken (before its flush,
        a *1 and its close, so it sees them in order)."""
        self._deliver(0)
        self._deliver(1)

    def _deliver(self, channel: int) -> None:
        table = self.table
        g = 2 * self.slot + channel
        count = table.py_wcount[g]
        if not count:
            return
        fill = table.py_wfill[g]
        table.py_wcount[g] = table.py_wfill[g] = 0
        recorder = self.recorder
        if recorder is not None:
            recorder.place_g711(channel, table.py_wpt[g], table.wpos[g, :count], table.wlen[g, :count],
                                table.wbuf[g, :fill])

    def _note_base(self) -> None:
        """The recorder's timeline base moved (answer, flush): a position before it is late."""
        table, g0 = self.table, 2 * self.slot
        base = self.recorder.timeline_base if self.recorder is not None else 0
        table.py_rbase[g0] = table.py_rbase[g0 + 1] = base

    # -- the batch lane (rtp.fastpath) ---------------------------------------------------

    def batchable(self, channel: int, now: float) -> Lane | None:
        """May the batch lane take `channel`'s next plain audio packets, exactly as `receive`
        would handle them (`OutStream.map`'s offset case on the shared leg-table row)? None
        while they need `receive`: not yet latched, a prompt or transcoding towards the
        other party, in-band detection, no source stream yet or one that needs a time check,
        the pause grace. Valid until anything else touches the relay (the owner asks again)."""
        leg = self.legs[channel]
        other = self.legs[1 - channel]
        out = other.out
        pt = leg.audio_pt
        if (
            leg.latched is None
            or (pt != g711.PCMU and pt != g711.PCMA)
            or leg.inband is not None
            or other.prompt is not None
            or other.audio_pt != pt
            or other.remote is None
            or not out.started
            or out.src_ssrc < 0
            or out.check_ts
            or now < self.record_grace_until
        ):
            return None
        recorder = self.recorder
        return Lane(leg.latched, pt, other.latched or other.remote, recorder is not None and recorder.recording)

    def receive_rtcp(self, channel: int, data: bytes, addr: tuple[str, int], now: float) -> list[Datagram]:
        """One RTCP datagram: relayed as-is to the other party's RTCP address (RFC 3550 §6).

        Accepted from where the party's RTCP is expected (its RTP address's port + 1, RFC
        3550 §11) or from where it latched; during the latch window, as for RTP, the first
        source on the party's media host (SDP or latched) or signalling IP is latched: the
        address RTCP for that party is sent to from then on. After the window no new
        source is learnt, and a source port of 0 never is (it cannot be answered).
        """
        leg = self.legs[channel]
        if leg.endpoint is None or len(data) < 8 or data[0] >> 6 != 2:
            self.stats.malformed += 1
            return []
        if addr != leg.rtcp_latched and not self._latch_rtcp(leg, addr, now):
            self.stats.unlatched += 1
            return []
        other = self.legs[1 - channel]
        target = other.rtcp_target
        if target is None:
            self.stats.no_target += 1
            return []
        self.stats.rtcp += 1
        return [(other.index, data, target)]

    def _latch_rtcp(self, leg: Leg, addr: tuple[str, int], now: float) -> bool:
        """May RTCP from `addr` be this party's? Latches it within the window (see receive_rtcp)."""
        expected = leg.rtcp_target
        if addr == expected and leg.rtcp_latched is None:
            return True  # the RFC 3550 §11 default: nothing to learn
        if leg.rtcp_latched is not None or now > leg.latch_until or addr[1] == 0:
            return False
        assert leg.endpoint is not None
        host = addr[0]
        if host != leg.endpoint.signalling_ip and (leg.remote is None or host != leg.remote[0]) and (
            leg.latched is None or host != leg.latched[0]
        ):
            return False
        leg.rtcp_latched = addr
        return True

    def dtmf(self, channel: int, digit: str, now: float) -> list[Datagram]:
        """A key press signalled out of band (SIP INFO): same *1 rules, regenerated as RFC 4733."""
        leg = self.legs[channel]
        other = self.legs[1 - channel]
        out: list[Datagram] = []
        self.busy = True
        actions = leg.feature.digit(digit, now) if leg.feature.enabled else [Forward(digit)]
        for action in actions:
            if isinstance(action, Toggle):
                self._toggle(leg, now)
            else:
                out.extend(self._synthesise(other, action.digit, now))
        return out

    def tick(self, now: float) -> list[Datagram]:
        """Drive timers: the *1 timeout, prompt packets from our own clock, recorder flush."""
        out: list[Datagram] = []
        for leg in self.legs:
            other = self.legs[1 - leg.index]
            for action in leg.feature.poll(now):
                if isinstance(action, Release):
                    out.extend(self._synthesise(other, action.digit, now))
            if leg.prompt is not None and now - leg.source_at >= SOURCE_SILENT:
                out.extend(self._generate(leg, now))
        first, second = self.legs
        self.busy = (
            first.prompt is not None
            or second.prompt is not None
            or first.feature.state is not State.IDLE
            or second.feature.state is not State.IDLE
        )
        if now >= self.next_flush and self.recorder is not None:
            self.next_flush += FLUSH_INTERVAL
            if self.next_flush <= now:
                self.next_flush = now + FLUSH_INTERVAL
            self.deliver_audio()
            self.recorder.flush(now)
            self._note_base()
        return out

    # -- what the relay makes itself ---------------------------------------------------

    def _toggle(self, leg: Leg, now: float) -> None:
        """*1: flip the recording; the presser (only) hears what it is now."""
        recorder = self.recorder
        if recorder is None:
            return
        on = not recorder.recording
        self.deliver_audio()  # what arrived before the change is the recorder's first
        recorder.set_recording(on, now, leg.party.name)
        if not on:
            self.record_grace_until = now + PAUSE_GRACE
        leg.prompt = self.prompts.recording if on else self.prompts.paused
        leg.prompt_pos = 0
        leg.gen_at = now
        self.busy = True

    def _generate(self, leg: Leg, now: float) -> list[Datagram]:
        """Prompt packets towards `leg` while the other party sends no audio."""
        target = leg.target
        out: list[Datagram] = []
        pt = leg.audio_pt if leg.audio_pt in (g711.PCMU, g711.PCMA) else g711.PCMU
        while leg.prompt is not None and leg.gen_at <= now + 1e-9:
            leg.gen_at += TICK_INTERVAL
            if leg.gen_at < now - TICK_INTERVAL:  # we fell behind (a stalled loop): do not burst
                leg.gen_at = now + TICK_INTERVAL
            samples = self._mix(leg, np.zeros(FRAME_SAMPLES, dtype=np.int16))
            if target is None:
                continue
            first = not leg.out.started or now - leg.out.sent_at > SOURCE_SILENT
            seq, ts = leg.out.next_audio(now)
            marker = 0x80 if first else 0  # RFC 3551 §4.1: first packet after silence
            out.append((leg.index, _pack_header(0x80, marker | pt, seq, ts, leg.out.ssrc) + g711.encode(samples, pt), target))
            self.stats.injected += 1
        return out

    def _synthesise(self, leg: Leg, digit: str, now: float) -> list[Datagram]:
        """A whole RFC 4733 packet train for `digit` towards `leg` (a digit we held back)."""
        target = leg.target
        if target is None or leg.dtmf_pt < 0:
            self.stats.no_target += 1
            return []
        train = digit_train(digit)
        first, ts = leg.out.next_event(now, len(train))
        self.stats.injected += len(train)
        ssrc = leg.out.ssrc
        return [
            (leg.index, _pack_header(0x80, (0x80 if marker else 0) | leg.dtmf_pt, (first + i) & 0xFFFF, ts, ssrc) + body, target)
            for i, (marker, body) in enumerate(train)
        ]

    def _latch(self, leg: Leg, addr: tuple[str, int], now: float) -> bool:
        """May a packet from `addr` be this party's? Latches NAT addresses (symmetric RTP)."""
        endpoint = leg.endpoint
        if endpoint is None:
            return False
        if addr == leg.remote:
            leg.latched = addr  # the SDP address is authoritative, and once it speaks nobody else may
            return True
        if leg.latched is not None or now > leg.latch_until or addr[0] != endpoint.signalling_ip or addr[1] == 0:
            return False  # a second source, too late, a stranger, or port 0 (unanswerable): RTP bleed refused
        # Behind NAT (or an asymmetric sender on its signalling host): the first source from
        # the party's signalling IP is learnt (RFC 4961 symmetric RTP: we answer there too);
        # no later source can take over, except the SDP address itself.
        leg.latched = addr
        return True
