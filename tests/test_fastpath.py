"""The batch lane (rtp.fastpath) forwards and records exactly as CallRelay.receive does.

Two identical relays see the same packets, batch by batch: one packet by packet through
`receive` (its streams plain `OutStream`s: the readable oracle), the other through
`LegTable.forward` on the leg table that holds its state (the packets it declines going
to `receive`, which works on the same table rows, then `refresh`, as rtp.mux does). Whatever
the packets (in order, gaps, reordering, duplicates, a leg twice in one batch, SSRC
changes, *1 and other digits, comfort noise, CSRCs, strangers, garbage), each party gets
the same datagrams in the same order, the recorder the same packets, and the relays end
in the same state.
"""

from __future__ import annotations

import json
import socket
import struct
import tempfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pathlib import Path

from rtp.call import MediaEndpoint
from rtp import g711
from rtp.batch_io import source_key
from rtp.events import event_payload
from rtp.fastpath import LegTable, RouteMap
from rtp.packet import build
from rtp.relay import CallRelay, OutStream, recorder_factory
from rtp.timeline import StreamClock
from tests.conftest import make_call
from tests.test_relay import EXT, EXT_ADDR, PROMPTS, USER, USER_SDP, USER_SIG_IP, Harness

SLOT = 1500
AUDIO = [g711.encode(np.full(160, v, dtype=np.int16), 0) for v in (1000, -2000, 300)]


def sockaddr_to_addr(raw: bytes) -> tuple[str, int]:
    return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]


class FakeMux:
    ipv6 = False  # BatchMux.ipv6: an IPv4 socket

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sockaddr(self, addr: tuple[str, int]) -> bytes:
        return struct.pack("<H", socket.AF_INET) + struct.pack("!H", addr[1]) + socket.inet_aton(addr[0]) + bytes(8)

    def send_rows(self, rows: np.ndarray, picked: np.ndarray, sizes: np.ndarray, sockaddrs: np.ndarray) -> int:
        assert rows.flags.c_contiguous  # BatchMux.send_rows points the kernel into it
        for k, size, sa in zip(picked.tolist(), sizes.tolist(), sockaddrs):
            self.sent.append((bytes(rows[k, :size]), sockaddr_to_addr(bytes(sa))))
        return len(sizes)

    def send_one(self, datagram: memoryview, target: tuple[str, int]) -> int:
        self.sent.append((bytes(datagram), target))
        return 1


class FakePort:
    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.mux = FakeMux()
        self.fast_routes: dict[int, int] = {}
        self.conflicts: dict[int, set] = {}

    def key_of(self, addr: tuple[str, int]) -> int:
        return source_key(addr)


class LaneSession:
    """What LegTable needs of a SharedSession, around a test Harness's relay."""

    def __init__(self, harness: Harness, table: LegTable) -> None:
        self.harness = harness
        self.relay = harness.relay
        self.closed = False
        self.ports = (FakePort(1), FakePort(2))
        for port in self.ports:
            table.ports[port.ident] = port
        self.slot = self.relay.slot
        table.attach(self)

    def port_of(self, channel: int) -> FakePort:
        return self.ports[channel]


class OracleRelay(CallRelay):
    """`receive`'s rules on the readable per-packet classes: plain `OutStream`s (see
    harness) and the recorder's own `StreamClock`s (`Recorder.add_g711`), not the leg table."""

    def record(self, channel: int, ssrc: int, seq: int, ts: int, payload: bytes, payload_type: int, now: float) -> None:
        self.recorder.add_g711(channel, ssrc, seq, ts, payload, payload_type, now)

    def receive(self, channel: int, data: bytes, addr: tuple[str, int], now: float) -> list:
        for leg in self.legs:  # receive's collision check reads our SSRC on the leg's row
            self.table.py_ssrc[leg.row] = leg.out.ssrc
        return super().receive(channel, data, addr, now)


def harness(recordings: Path | None = None, table: LegTable | None = None) -> Harness:
    """A relay whose streams start where the other's do (they start at random numbers);
    with `recordings`, a real Recorder writing there instead of the fake one. Without
    `table` the oracle (`OracleRelay`, plain `OutStream`s), with it production's relay on
    rows of `table`."""
    cls = OracleRelay if table is None else CallRelay
    h = Harness(table=table, relay_class=cls)
    if recordings is not None:
        h.relay = cls(make_call(), PROMPTS, recorder_factory(recordings, "silence"), feature_timeout=2.0,
                      ssrcs=(0xAAAA0000, 0xBBBB0000), table=table)
        h.relay.set_media(EXT, MediaEndpoint(EXT_ADDR, EXT_ADDR[0]), 0.0)
        h.relay.set_media(USER, MediaEndpoint(USER_SDP, USER_SIG_IP), 0.0)
        h.relay.answered(0.0)
    if table is None:
        for leg in h.relay.legs:  # the oracle: OutStream's own slots, no table behind them
            leg.out = OutStream(leg.out.ssrc, leg.out.seq, leg.out.ts)
    for leg in h.relay.legs:
        leg.out.seq, leg.out.ts = 100 + leg.index, 5000 + leg.index
    return h


def run_reference(batches, now0: float, recordings: Path | None = None) -> tuple[Harness, dict]:
    h = harness(recordings)
    out: dict[int, list] = {EXT: [], USER: []}
    for k, batch in enumerate(batches):
        now = now0 + 0.02 * (k + 1)
        for channel, data, addr in batch:
            for leg, payload, target in h.relay.receive(channel, data, addr, now):
                out[leg].append((payload, target))
        for leg, payload, target in h.relay.tick(now):
            out[leg].append((payload, target))
    h.relay.close(now0 + 0.02 * (len(batches) + 1))
    return h, out


def run_lane(batches, now0: float, recordings: Path | None = None, lane: bool = True) -> tuple[Harness, dict, int]:
    """Production's relay on a leg table, with the batch lane (`lane`) or without it (per-call
    ports: every packet through `receive` on the table's rows)."""
    table = LegTable(capacity=2)
    h = harness(recordings, table)
    session = LaneSession(h, table)
    table.refresh(session, now0)
    out: dict[int, list] = {EXT: [], USER: []}
    taken = 0
    for k, batch in enumerate(batches):
        now = now0 + 0.02 * (k + 1)
        # The batch as rtp.mux sees it: the receive buffer's rows, their lengths, and each
        # packet's lane leg found from its source on the port it arrived at.
        rows = np.zeros((len(batch), SLOT), dtype=np.uint8)
        for i, (_, data, _) in enumerate(batch):
            rows[i, : len(data)] = np.frombuffer(data, np.uint8)
        lens = [len(d) for _, d, _ in batch]
        legs = [session.ports[c].fast_routes.get(source_key(a), -1) if lane else -1 for c, _, a in batch]
        sent_before = [len(p.mux.sent) for p in session.ports]
        slow = table.forward(rows, lens, legs, now) if batch else []
        taken += len(batch) - len(slow)
        for leg, port in enumerate(session.ports):  # port `leg` sends to the party on channel `leg`
            out[leg] += port.mux.sent[sent_before[leg]:]
        for i in slow:
            channel, data, addr = batch[i]
            got = h.relay.receive(channel, data, addr, now)  # on the same leg-table rows
            table.refresh(session, now)
            for leg, payload, target in got:
                out[leg].append((payload, target))
        got = h.relay.tick(now)
        if h.relay.busy:  # as rtp.mux.SharedSession._tick does
            table.refresh(session, now)
        for leg, payload, target in got:
            out[leg].append((payload, target))
    h.relay.close(now0 + 0.02 * (len(batches) + 1))
    return h, out, taken


class Party:
    """A sender: its own sequence numbers, timestamps and SSRC."""

    def __init__(self, channel: int, ssrc: int) -> None:
        self.channel = channel
        self.seq = 1000 * (channel + 1)
        self.ts = 50000 * (channel + 1)
        self.ssrc = ssrc
        self.event_ts = 0
        self.event_n = 0
        self.held: list[bytes] = []

    def audio(self, n: int = 0, step: int = 1) -> bytes:
        self.seq = (self.seq + step) & 0xFFFF
        self.ts = (self.ts + 160 * step) & 0xFFFFFFFF
        return build(0, self.seq, self.ts, self.ssrc, AUDIO[n % len(AUDIO)])

    def sized(self, samples: int) -> bytes:
        """Audio of another packet time: 10 ms (80 bytes) or 40 ms (320, longer than the lane holds)."""
        self.seq = (self.seq + 1) & 0xFFFF
        payload = g711.encode(np.full(samples, 700, dtype=np.int16), 0)
        packet = build(0, self.seq, self.ts, self.ssrc, payload)
        self.ts = (self.ts + samples) & 0xFFFFFFFF
        return packet

    def event(self, code: int, end: bool) -> bytes:
        self.seq = (self.seq + 1) & 0xFFFF
        if self.event_n == 0:
            self.event_ts = self.ts
        self.event_n = 0 if end else self.event_n + 1
        return build(101, self.seq, self.event_ts, self.ssrc, event_payload(code, end, 160 * (self.event_n + 1)),
                     marker=self.event_n == 1)


ADDR = {EXT: EXT_ADDR, USER: USER_SDP}

step_kinds = st.sampled_from(["audio", "audio", "audio", "audio", "gap", "back", "dup", "twice", "ssrc", "star",
                              "one", "digit", "cn", "csrc", "stranger", "garbage", "none", "none", "burst", "held", "held", "release",
                              "short", "long", "jump", "restart"])


def script_to_batches(script: list[tuple[str, str]]) -> list[list[tuple[int, bytes, tuple[str, int]]]]:
    parties = {EXT: Party(EXT, 0x1111), USER: Party(USER, 0x2222)}
    batches = []
    last: dict[int, bytes] = {}
    for kinds in script:
        batch = []
        for channel, kind in zip((EXT, USER), kinds):
            p = parties[channel]
            addr = ADDR[channel]
            if kind == "audio":
                pkts = [p.audio(len(batch))]
            elif kind == "gap":
                pkts = [p.audio(step=4)]
            elif kind == "back":  # a late packet of the past
                pkts = [build(0, (p.seq - 2) & 0xFFFF, (p.ts - 320) & 0xFFFFFFFF, p.ssrc, AUDIO[2])]
            elif kind == "dup":
                pkts = [last.get(channel, p.audio())]
            elif kind == "twice":
                pkts = [p.audio(), p.audio(1)]
            elif kind == "burst":  # a sender that paused its clock, then 15 packets (300 ms) at once
                pkts = [p.audio(j) for j in range(15)]
            elif kind == "held":  # made on time, held up in the network
                p.held.append(p.audio())
                pkts = []
            elif kind == "release":  # ...and delivered all at once, late
                pkts, p.held = p.held, []
            elif kind == "short":
                pkts = [p.sized(80), p.sized(80)]
            elif kind == "long":
                pkts = [p.sized(320)]
            elif kind == "jump":  # the same SSRC, far ahead (RFC 3550 A.1: a restart, not loss)
                pkts = [p.audio(step=5000)]
            elif kind == "restart":  # the same SSRC and sequence, its timestamps 3 s ahead (the clock re-anchors)
                p.ts = (p.ts + 24000) & 0xFFFFFFFF
                pkts = [p.audio()]
            elif kind == "ssrc":
                p.ssrc = (p.ssrc * 7 + 1) & 0xFFFFFFFF
                p.seq = (p.seq * 13) & 0xFFFF
                pkts = [p.audio()]
            elif kind in ("star", "one", "digit"):
                code = {"star": 10, "one": 1, "digit": 5}[kind]
                pkts = [p.event(code, False), p.event(code, False), p.event(code, True)]
            elif kind == "cn":
                p.seq = (p.seq + 1) & 0xFFFF
                pkts = [build(13, p.seq, p.ts, p.ssrc, b"\x40")]
            elif kind == "csrc":
                p.seq = (p.seq + 1) & 0xFFFF
                p.ts = (p.ts + 160) & 0xFFFFFFFF
                data = bytearray(build(0, p.seq, p.ts, p.ssrc, AUDIO[0]))
                data[0] |= 1  # one CSRC: the header grows by 4 bytes
                pkts = [bytes(data[:12]) + b"\x00\x00\x00\x09" + bytes(data[12:])]
            elif kind == "stranger":
                pkts = [p.audio()]
                addr = ("192.0.2.99", 7000)
            elif kind == "garbage":
                pkts = [b"\x80\x00\x01"]
            else:
                pkts = []
            for data in pkts:
                batch.append((channel, data, addr))
            if pkts:
                last[channel] = pkts[-1]
        batches.append(batch)
    return batches



def compare(script, lane: bool = True) -> int:
    batches = script_to_batches([("audio", "audio")] * 3 + script)
    ref, ref_out = run_reference(batches, 0.0)
    lane, lane_out, taken = run_lane(batches, 0.0, lane=lane)
    for leg in (EXT, USER):
        assert lane_out[leg] == ref_out[leg], f"datagrams to channel {leg} differ"
    for channel in (EXT, USER):  # per channel in order (across channels the lane goes first)
        got = [x for x in lane.recorder.added if x[0] == channel]
        want = [x for x in ref.recorder.added if x[0] == channel]
        assert [x[:2] for x in got] == [x[:2] for x in want]  # the same positions, in the same order
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(got, want))
    assert lane.recorder.changes == ref.recorder.changes
    assert lane.relay.stats == ref.relay.stats
    for leg in (EXT, USER):
        a, b = lane.relay.legs[leg].out, ref.relay.legs[leg].out
        assert (a.seq, a.ts, a.sent_at, a.src_ssrc, a.seq_offset, a.ts_offset) == (
            b.seq, b.ts, b.sent_at, b.src_ssrc, b.seq_offset, b.ts_offset)
        assert lane.relay.legs[leg].source_at == ref.relay.legs[leg].source_at
    return taken


def test_a_steady_call_goes_through_the_lane_and_matches_receive() -> None:
    taken = compare([("audio", "audio")] * 50)
    assert taken >= 2 * 50 - 4  # after the first packets latch, everything takes the lane


def test_star_one_prompt_and_resume_match_receive() -> None:
    script = [("audio", "audio")] * 5 + [("audio", "star"), ("audio", "one")] + [("audio", "audio")] * 20
    script += [("audio", "star"), ("audio", "one")] + [("audio", "audio")] * 20
    compare(script)


def test_late_bursts_match_receive(tmp_path: Path) -> None:
    """Packets held up across a flush, past the jitter window (the clock's late_run), and a
    sender that paused its clock (a re-anchoring): the lane agrees with receive()."""
    script = [("audio", "audio")] * 52 + [("held", "held")] * 45 + [("release", "release")] + [("audio", "audio")] * 50
    script += ([("audio", "audio")] * 48 + [("none", "none")] * 20 + [("burst", "burst")] * 3) * 2
    compare(script)
    compare_wavs(script, tmp_path)


def test_a_leg_twice_in_one_batch_and_reordering_match_receive() -> None:
    compare([("twice", "audio"), ("audio", "back"), ("dup", "dup"), ("gap", "twice")] * 5)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(step_kinds, step_kinds), min_size=1, max_size=40))
def test_any_packets_give_the_same_datagrams_recording_and_state(script) -> None:
    compare(script)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(step_kinds, step_kinds), min_size=1, max_size=40))
def test_the_per_packet_path_alone_gives_the_oracles_datagrams_recording_and_state(script) -> None:
    """Per-call ports: every packet through `receive` on the leg table's rows, whose common
    cases are written out on the arrays (TableStream.map, CallRelay.record), against the
    readable OutStream and StreamClock."""
    assert compare(script, lane=False) == 0


def test_the_per_packet_path_alone_records_the_same_wav_through_late_bursts(tmp_path: Path) -> None:
    """Held 2 s, past the jitter window by more than a LATE_RUN: the late run re-anchors."""
    script = [("audio", "audio")] * 52 + [("held", "held")] * 100 + [("release", "release")] + [("audio", "audio")] * 50
    script += ([("audio", "audio")] * 48 + [("none", "none")] * 20 + [("burst", "burst")] * 3) * 2
    script += [("twice", "audio"), ("audio", "back"), ("dup", "dup"), ("gap", "twice"), ("ssrc", "short"),
               ("jump", "restart"), ("audio", "audio")] * 5
    compare(script, lane=False)
    assert compare_wavs(script, tmp_path, lane=False) == 0
    batches = script_to_batches([("audio", "audio")] * 3 + script)
    h, _, _ = run_lane(batches, 0.0, tmp_path / "again", lane=False)
    assert all(clock.resyncs >= 2 for clock in h.relay.clocks)  # the late run, the restart (the case is reached)


_SSRCS = (0x1111, 0x2222, 0x3333, 0x4444, 0x5555)  # one more than a channel's clock keeps anchors for
_clock_steps = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2, 3, 4]),  # which SSRC sends
        st.sampled_from([1, 1, 1, 1, 0, -2, 3, 40000]),  # its sequence number step (40000: an older one)
        st.sampled_from([160, 160, 160, 0, -320, 480, 8160, 24000, -24000]),  # its timestamp step (8160: RESYNC's edge)
        st.sampled_from([160, 160, 80]),  # payload length
        st.sampled_from([160, 160, 0, 40, 800]),  # arrival step, samples
        st.sampled_from([-4000, -1000, -1, 0, 200, 1600, 1600, 1600]),  # horizon behind arrival (negative: ahead, late)
    ),
    max_size=150,
)


def _record_against_stream_clock(steps: list[tuple[int, int, int, int, int, int]]) -> int:
    """`CallRelay.record` (the leg clock's common case written out on the leg table's row,
    `LegClock` for the rest) places every packet where the readable `StreamClock` does."""
    h = Harness()
    relay = h.relay
    oracle = StreamClock()
    g = 2 * relay.slot
    seqs = {ssrc: 1000 * k for k, ssrc in enumerate(_SSRCS)}
    tss = {ssrc: 90000 * k for k, ssrc in enumerate(_SSRCS)}
    arrival = 800
    for which, seq_step, ts_step, length, advance, lag in steps:
        ssrc = _SSRCS[which]
        seqs[ssrc] = (seqs[ssrc] + seq_step) & 0xFFFF
        tss[ssrc] = (tss[ssrc] + ts_step) & 0xFFFFFFFF
        arrival += advance
        horizon = max(0, arrival - lag)
        relay.table.py_rbase[g] = horizon  # the recorder's base, as CallRelay._note_base keeps it
        relay.record(EXT, ssrc, seqs[ssrc], tss[ssrc], bytes(length), 0, arrival / 8000)
        want = oracle.position(ssrc, seqs[ssrc], tss[ssrc], length, arrival, horizon)
        relay.deliver_audio()
        assert h.recorders[0].added[-1][1] == want
        mine, theirs = relay.clocks[EXT].anchor(ssrc), oracle.anchor(ssrc)
        assert (mine.anchor_pos, mine.anchor_ts, mine.newest_ts, mine.newest_seq, mine.late_run) == (
            theirs.anchor_pos, theirs.anchor_ts, theirs.newest_ts, theirs.newest_seq, theirs.late_run)
    assert relay.clocks[EXT].resyncs == oracle.resyncs
    return oracle.resyncs


@settings(max_examples=300, deadline=None)
@given(_clock_steps)
def test_the_relays_placing_is_stream_clocks_for_any_packets(steps) -> None:
    _record_against_stream_clock(steps)


def test_the_relays_placing_is_stream_clocks_at_the_edges() -> None:
    """One sample late (horizon just past the packet); a timestamp exactly RESYNC_SAMPLES
    ahead of its arrival (kept), one more (re-anchored)."""
    on_time = (0, 1, 160, 160, 160, 0)
    edges = [on_time] * 3 + [(0, 1, 160, 160, 160, -1), on_time, (0, 1, 8160, 160, 160, 1600), on_time]
    edges += [(0, 1, 161, 160, 160, 1600), on_time]
    h_resyncs = _record_against_stream_clock(edges)
    assert h_resyncs == 1


def test_the_relays_placing_is_stream_clocks_through_a_late_run() -> None:
    """A second of newer packets all too late to place (a sender clock slower than ours)
    re-anchors (LATE_RUN_SAMPLES); shorter runs, broken by one in time, do not."""
    late = (0, 1, 160, 160, 160, -1000)
    on_time = (0, 1, 160, 160, 160, 1600)
    script = [on_time] * 5 + [late] * 30 + [on_time] + [late] * 49 + [on_time] + [late] * 60 + [on_time] * 5
    assert _record_against_stream_clock(script) == 1


def compare_wavs(script, tmp: Path, lane: bool = True) -> int:
    """The real recorder: the lane's WAV and sidecar are the reference's, byte for byte."""
    batches = script_to_batches([("audio", "audio")] * 3 + script)
    run_reference(batches, 0.0, tmp / "ref")
    _, _, taken = run_lane(batches, 0.0, tmp / "lane", lane=lane)
    ref = sorted((tmp / "ref").rglob("*.wav"))
    lane = sorted((tmp / "lane").rglob("*.wav"))
    assert len(ref) == len(lane) == 1
    assert lane[0].read_bytes() == ref[0].read_bytes()
    ref_side = json.loads(ref[0].with_suffix(".json").read_text())
    lane_side = json.loads(lane[0].with_suffix(".json").read_text())
    assert lane_side["segments"] == ref_side["segments"] and lane_side["events"] == ref_side["events"]
    return taken


def test_recording_through_the_lane_writes_the_same_wav(tmp_path: Path, monkeypatch) -> None:
    """The lane places nearly every packet itself (a batch's positions in numpy); the
    per-packet CallRelay.record is left the few the clock's own rules need."""
    calls: list[int] = []
    original = CallRelay.record
    monkeypatch.setattr(CallRelay, "record", lambda self, *a: calls.append(a[0]) or original(self, *a))
    script = [("audio", "audio")] * 60 + [("gap", "back"), ("audio", "star"), ("audio", "one")] + [("audio", "audio")] * 60
    assert compare_wavs(script, tmp_path) > 200
    assert len(calls) < 10  # the oracle (OracleRelay) places through the recorder, not here


def test_packet_times_other_than_20_ms_record_the_same_wav(tmp_path: Path) -> None:
    """10 ms packets (held by the lane, rows of another length) and 40 ms ones (longer
    than its rows: the recorder's own add_g711), mixed with 20 ms ones in one stream."""
    script = ([("audio", "audio")] * 10 + [("short", "long")] * 10 + [("long", "short"), ("audio", "short")] * 10) * 2
    assert compare_wavs(script, tmp_path) > 150


def test_a_leg_whose_rows_fill_before_the_flush_hands_them_over_early(tmp_path: Path, monkeypatch) -> None:
    """Rows for 3 packets, a flush a second: each leg's packets go to the recorder as its
    rows fill (CallRelay.record), and the WAV is still the reference's."""
    import rtp.fastpath

    monkeypatch.setattr(rtp.fastpath, "WAIT_ROWS", 3)
    script = [("audio", "audio")] * 70 + [("twice", "gap"), ("short", "audio"), ("back", "dup")] * 10
    assert compare_wavs(script, tmp_path) > 150


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(step_kinds, step_kinds), min_size=1, max_size=60))
def test_any_packets_record_the_same_wav(script) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        compare_wavs(script, Path(tmp))


_KEYS = st.integers(0, (1 << 48) - 1) | st.sampled_from([0, 1, (1 << 48) - 1, source_key(("127.0.0.1", 5004))])


@given(st.lists(st.tuples(st.sampled_from(["set", "del", "pop", "clear", "lookup"]), _KEYS, st.integers(0, 4095)),
                max_size=60),
       st.lists(_KEYS, min_size=1, max_size=40))
def test_a_batch_lookup_finds_exactly_what_the_dict_holds(ops: list[tuple[str, int, int]], probes: list[int]) -> None:
    """RouteMap.lookup (a whole batch's sources at once) agrees with dict.get(key, -1) after
    any sequence of route changes, including lookups between them (its cache is rebuilt)."""
    routes = RouteMap()
    for op, key, leg in ops:
        if op == "set":
            routes[key] = leg
        elif op == "del" and key in routes:
            del routes[key]
        elif op == "pop":
            routes.pop(key, None)
        elif op == "clear":
            routes.clear()
        else:
            routes.lookup(np.array([key], dtype=np.uint64))
        known = list(routes)
        batch = np.array(probes + known[:5], dtype=np.uint64)
        assert routes.lookup(batch).tolist() == [routes.get(int(k), -1) for k in batch.tolist()]


def test_a_relays_rows_survive_the_table_growing() -> None:
    """The leg table reallocates its columns when calls join (doubling): a call's stream,
    clock and waiting rows carry over, so it goes on exactly as on a table that had room."""
    small, roomy = LegTable(capacity=2), LegTable(capacity=64)
    grown, alone = Harness(table=small), Harness(table=roomy)
    for h in (grown, alone):
        for leg in h.relay.legs:
            leg.out.seq, leg.out.ts = 100 + leg.index, 5000 + leg.index
    sent: dict[int, list] = {0: [], 1: []}
    for k in range(30):
        if k == 12:  # other calls arrive: 2 legs -> 16
            others = [Harness(table=small) for _ in range(6)]
            assert small.seq.shape[0] >= 14 and others
        for i, h in enumerate((grown, alone)):
            now = 0.02 * (k + 1)
            sent[i] += h.audio(EXT, now, value=100 * k) + h.audio(USER, now, value=-50 * k)
            sent[i] += h.relay.tick(now)
    assert sent[0] == sent[1] and len(sent[0]) >= 50
    assert [x[:2] for x in grown.recorder.added] == [x[:2] for x in alone.recorder.added]
    assert grown.relay.stats == alone.relay.stats
