"""Exact sample positions: loss, reordering, gaps, SSRC changes, timestamp wrap, duplicates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.timeline import (
    INITIAL_CAPACITY_FRAMES,
    MAX_PENDING_FRAMES,
    MAX_SSRCS_PER_CHANNEL,
    RESYNC_SAMPLES,
    StreamClock,
    Timeline,
)

N = 160  # samples in a 20 ms G.711 packet
FAR = 10**12  # a horizon nothing is behind: no position is final yet


def at(seconds: float) -> int:
    return round(seconds * 8000)


def test_first_packet_anchors_at_its_arrival() -> None:
    clock = StreamClock()
    assert clock.position(0x1234, 7, 987654, N, at(1.5), 0) == 12000


def test_following_packets_go_by_timestamp_not_arrival() -> None:
    clock = StreamClock()
    clock.position(1, 100, 5000, N, 800, 0)
    # Arrives 15 ms late: still right after the first packet.
    assert clock.position(1, 101, 5000 + N, N, 800 + N + 120, 0) == 800 + N


def test_lost_packet_leaves_its_slot_empty() -> None:
    clock = StreamClock()
    positions = [clock.position(1, seq, 1000 + (seq - 10) * N, N, 4000 + (seq - 10) * N, 0)
                 for seq in (10, 11, 13, 14)]
    assert positions == [4000, 4160, 4480, 4640]  # 12 is missing, 13 is not moved up


def test_reordered_packet_lands_in_its_place() -> None:
    clock = StreamClock()
    assert clock.position(1, 1, 0, N, 0, 0) == 0
    assert clock.position(1, 3, 2 * N, N, 2 * N, 0) == 320
    assert clock.position(1, 2, N, N, 2 * N + 80, 0) == 160  # older by seq, arrived after 3
    assert clock.position(1, 4, 3 * N, N, 3 * N, 0) == 480
    assert clock.resyncs == 0


def test_three_second_gap_with_running_timestamps_is_kept() -> None:
    clock = StreamClock()
    clock.position(1, 1, 0, N, 0, 0)
    # Silence suppression: no packets for 3 s, the timestamp ran on with the clock.
    assert clock.position(1, 2, N + 24000, N, N + 24000, 0) == N + 24000
    assert clock.resyncs == 0


def test_three_second_gap_with_frozen_timestamps_reanchors_at_arrival() -> None:
    clock = StreamClock()
    clock.position(1, 1, 0, N, 0, 0)
    # The sender stopped for 3 s and went on from the next timestamp: arrival wins.
    assert clock.position(1, 2, N, N, N + 24000, 0) == N + 24000
    assert clock.position(1, 3, 2 * N, N, 2 * N + 24000, 0) == 2 * N + 24000
    assert clock.resyncs == 1


def test_timestamp_jump_forward_reanchors() -> None:
    clock = StreamClock()
    clock.position(1, 1, 1000, N, 0, 0)
    assert clock.position(1, 2, 1000 + 10_000_000, N, N, 0) == N
    assert clock.position(1, 3, 1000 + 10_000_000 + N, N, 2 * N, 0) == 2 * N


def test_small_jitter_within_resync_does_not_reanchor() -> None:
    clock = StreamClock()
    clock.position(1, 1, 0, N, 0, 0)
    late = RESYNC_SAMPLES - 1
    assert clock.position(1, 2, N, N, N + late, 0) == N
    assert clock.resyncs == 0


def test_ssrc_change_anchors_the_new_source_and_stragglers_keep_theirs() -> None:
    clock = StreamClock()
    clock.position(0xAAAA, 1, 0, N, 0, 0)
    clock.position(0xAAAA, 2, N, N, N, 0)
    # A new source (e.g. a transfer behind the far end) with unrelated seq and timestamp.
    assert clock.position(0xBBBB, 40000, 3_000_000_000, N, 2 * N + 40, 0) == 2 * N + 40
    assert clock.position(0xBBBB, 40001, 3_000_000_000 + N, N, 3 * N + 40, 0) == 3 * N + 40
    # A late packet from the old source still lands by the old anchor.
    assert clock.position(0xAAAA, 3, 2 * N, N, 3 * N + 50, 0) == 2 * N


def test_only_a_few_sources_are_remembered() -> None:
    clock = StreamClock()
    for ssrc in range(MAX_SSRCS_PER_CHANNEL + 1):
        clock.position(ssrc, 1, 0, N, ssrc * 1000, 0)
    # Source 0 was forgotten: it is anchored afresh at its arrival.
    assert clock.position(0, 2, N, N, 99_999, 0) == 99_999


def test_timestamp_wraps_at_32_bits() -> None:
    clock = StreamClock()
    start = 2**32 - 2 * N
    positions = [clock.position(1, seq, (start + seq * N) & 0xFFFFFFFF, N, seq * N, 0)
                 for seq in range(5)]
    assert positions == [0, 160, 320, 480, 640]
    assert clock.resyncs == 0


def test_sequence_number_wraps_at_16_bits() -> None:
    clock = StreamClock()
    clock.position(1, 65535, 0, N, 0, 0)
    assert clock.position(1, 0, N, N, N, 0) == N  # newer despite the smaller number
    assert clock.position(1, 65535, 0, N, 2 * N, 0) == 0  # a duplicate of the older one


def test_duplicate_goes_to_the_same_place() -> None:
    clock = StreamClock()
    clock.position(1, 1, 0, N, 0, 0)
    assert clock.position(1, 2, N, N, N, 0) == N
    assert clock.position(1, 2, N, N, N + 900, 0) == N


def test_persistent_lateness_reanchors() -> None:
    """A sender whose clock runs slow keeps arriving too late: re-anchor, don't go mute."""
    clock = StreamClock()
    clock.position(1, 1, 0, N, 0, 0)
    lag = at(0.5)  # behind its anchor by half a second: within RESYNC, beyond the window
    placed = []
    for seq in range(2, 80):
        arrival = seq * N + lag
        horizon = arrival - at(0.2)  # what flushing has made final by then
        placed.append(clock.position(1, seq, seq * N, N, arrival, horizon))
    assert clock.resyncs == 1  # after LATE_RUN_SECONDS of it, not at the first late packet
    assert placed[40] == 42 * N
    assert placed[-1] == 79 * N + lag


def test_timeline_places_and_takes_interleaved_frames() -> None:
    line = Timeline()
    line.place(0, 10, np.array([1, 2, 3], np.int16))
    line.place(1, 11, np.array([-1, -2], np.int16))
    frames = line.take(15)
    assert frames.shape == (15, 2)
    assert frames[10:13, 0].tolist() == [1, 2, 3]
    assert frames[11:13, 1].tolist() == [-1, -2]
    assert frames[:10].sum() == 0 and frames[13:].sum() == 0
    assert line.base == 15


def test_duplicate_placement_does_not_double() -> None:
    line = Timeline()
    samples = np.full(N, 1000, np.int16)
    line.place(0, 0, samples)
    line.place(0, 0, samples)
    assert line.take(N)[:, 0].tolist() == [1000] * N


def test_samples_before_base_are_dropped_and_counted() -> None:
    line = Timeline()
    line.take(100)
    line.place(0, 90, np.arange(1, 21, dtype=np.int16))
    frames = line.take(120)
    assert frames[:10, 0].tolist() == list(range(11, 21))
    assert line.dropped_late == 10


def test_pending_audio_survives_take_and_grows() -> None:
    line = Timeline()
    far = INITIAL_CAPACITY_FRAMES * 3
    line.place(1, far, np.array([7, 8], np.int16))
    line.place(0, 5, np.array([9], np.int16))
    first = line.take(100)
    assert first[5, 0] == 9
    rest = line.take(far + 2)
    assert rest[-2:, 1].tolist() == [7, 8]
    assert rest[:, 0].sum() == 0


def test_taken_frames_are_the_callers_and_only_the_window_stays_behind() -> None:
    """A flush's second (1.2 s placed, 1.0 s taken, as the recorder does): the frames handed
    out are exactly the second (the writer's to keep while a disk is slow), later placing
    and taking never changes them, and the timeline keeps only the 0.2 s past the cut."""
    line = Timeline()
    second = np.arange(at(1.2), dtype=np.int16)
    line.place_many(0, [0], [second.size], second)
    frames = line.take(at(1.0))
    assert frames.shape == (at(1.0), 2) and frames.flags.owndata and frames.nbytes == at(1.0) * 4
    assert np.array_equal(frames[:, 0], second[: at(1.0)])
    assert line._buf.shape[0] <= at(0.25)  # noqa: SLF001 - the memory a call holds between flushes (issue 17)
    line.place(0, at(1.0), np.full(N, -1, np.int16))  # overwrites the kept window's start
    line.place_many(1, [at(1.1)], [at(1.0)], np.ones(at(1.0), np.int16))  # grows it again
    rest = line.take(at(2.0))
    assert np.array_equal(frames[:, 0], second[: at(1.0)]) and not frames[:, 1].any()
    assert rest[:N, 0].tolist() == [-1] * N and np.array_equal(rest[N : at(0.2), 0], second[at(1.0) + N :])
    assert rest[at(0.1) :, 1].tolist() == [1] * at(0.9)


def test_gap_longer_than_buffer_is_silence() -> None:
    line = Timeline()
    line.place(0, 0, np.ones(N, np.int16))
    frames = line.take(3 * INITIAL_CAPACITY_FRAMES)
    assert frames.shape[0] == 3 * INITIAL_CAPACITY_FRAMES
    assert frames[:, 0].sum() == N


def test_bogus_far_future_position_is_dropped() -> None:
    line = Timeline()
    line.place(0, MAX_PENDING_FRAMES, np.ones(N, np.int16))
    assert line.dropped_ahead == N
    assert line.take(10).sum() == 0


def test_discard_moves_base_without_keeping() -> None:
    line = Timeline()
    line.place(0, 0, np.ones(10, np.int16))
    line.place(0, 50, np.full(10, 2, np.int16))
    line.discard(40)
    assert line.base == 40
    frames = line.take(60)
    assert frames[10:20, 0].tolist() == [2] * 10
    assert frames[:10, 0].sum() == 0


@pytest.mark.parametrize("step", [1, 159, 160, 4000])
def test_take_in_any_step_gives_the_same_frames(step: int) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1000, size=(4000, 2)).astype(np.int16)
    whole = Timeline()
    pieces = Timeline()
    for line in (whole, pieces):
        for ch in (0, 1):
            for pos in range(0, 4000, N):
                line.place(ch, pos, data[pos : pos + N, ch])
    out = [pieces.take(min(p + step, 4000)) for p in range(0, 4000, step)]
    assert np.array_equal(np.concatenate(out), whole.take(4000))


# -- place_many: a batch of packets in one scatter, exactly as `place` one by one ---------------


def place_both(packets: list[tuple[int, np.ndarray]], base: int = 0,
               channel: int = 0) -> tuple[Timeline, Timeline]:
    """The same packets placed one by one and as one batch, on timelines at `base`."""
    one, many = Timeline(), Timeline()
    for line in (one, many):
        line.discard(base)
        line.place(1 - channel, base + 3, np.array([5, 6], np.int16))  # the other channel is left alone
    for pos, samples in packets:
        one.place(channel, pos, samples)
    if packets:
        many.place_many(
            channel,
            [pos for pos, _ in packets],
            [len(samples) for _, samples in packets],
            np.concatenate([samples for _, samples in packets]),
        )
    return one, many


def assert_same(one: Timeline, many: Timeline) -> None:
    assert (many.dropped_late, many.dropped_ahead) == (one.dropped_late, one.dropped_ahead)
    assert many.base == one.base
    upto = one.base + max(one._end, many._end) + 1
    assert np.array_equal(many.take(upto), one.take(upto))


def values(k: int, n: int = N) -> np.ndarray:
    return np.full(n, k + 1, np.int16) + np.arange(n, dtype=np.int16)


def test_place_many_in_order_is_one_slice() -> None:
    one, many = place_both([(k * N, values(k)) for k in range(50)])
    assert_same(one, many)
    one, many = place_both([(k * N, values(k)) for k in range(50)], base=3 * N + 1)  # the first are late
    assert_same(one, many)
    one, many = place_both([(MAX_PENDING_FRAMES - 10 * N + k * N, values(k)) for k in range(12)])  # the last too far
    assert_same(one, many)


def test_place_many_with_gaps() -> None:
    one, many = place_both([(k * N, values(k)) for k in range(50) if k % 7 != 3])
    assert_same(one, many)


def test_place_many_reordered_lands_in_place() -> None:
    order = [0, 2, 1, 3, 5, 4, 6, 9, 7, 8]
    one, many = place_both([(k * N, values(k)) for k in order])
    assert_same(one, many)


def test_place_many_later_duplicate_wins_an_overlap() -> None:
    """Sequential slice writes: the later packet owns the overlap. NumPy documents no order
    for repeated indices in a fancy assignment, so place_many must not rely on one."""
    packets = [(0, values(0)), (N, values(1)), (N, values(7)), (N // 2, values(9)), (N + 80, values(3, 40))]
    one, many = place_both(packets)
    assert_same(one, many)
    line = Timeline()
    line.place_many(0, [0, 0, 0], [4, 4, 4], np.array([1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3], np.int16))
    assert line.take(4)[:, 0].tolist() == [3, 3, 3, 3]


def test_place_many_drops_late_and_far_ahead_as_place_does() -> None:
    base = 10 * N
    packets = [
        (base - 2 * N, values(0)),  # wholly final: dropped
        (base - 30, values(1)),  # partly final: the first 30 dropped
        (base + N, values(2)),
        (base + MAX_PENDING_FRAMES - N + 1, values(3)),  # ends past the pending limit
        (base + 2 * N, values(4, 17)),
        (base + N, values(5)),  # a duplicate slot after the drops
    ]
    one, many = place_both(packets, base=base)
    assert_same(one, many)
    assert many.dropped_late == N + 30 and many.dropped_ahead == N


def test_place_many_only_late_packets() -> None:
    one, many = place_both([(0, values(0)), (N, values(1))], base=4 * N)
    assert_same(one, many)
    assert many.dropped_late == 2 * N


def test_place_many_grows_the_buffer() -> None:
    far = INITIAL_CAPACITY_FRAMES * 3
    one, many = place_both([(0, values(0)), (far, values(1)), (far - 7, values(2, 3))])
    assert_same(one, many)


@settings(max_examples=300, deadline=None)
@given(
    base=st.integers(0, 5000),
    packets=st.lists(
        st.tuples(
            st.one_of(st.integers(-400, 6000), st.integers(MAX_PENDING_FRAMES - 400, MAX_PENDING_FRAMES + 10)),
            st.integers(1, 400),
            st.integers(-30000, 30000),
        ),
        max_size=40,
    ),
)
def test_place_many_is_place_one_by_one(base: int, packets: list[tuple[int, int, int]]) -> None:
    """Any positions (late, overlapping, duplicated, out of order, too far ahead) and
    lengths: the batch leaves the same frames and the same drop counts."""
    batch = [(base + offset, (np.arange(length) + value).astype(np.int16)) for offset, length, value in packets]
    one, many = place_both(batch, base=base, channel=1)
    assert_same(one, many)


@settings(max_examples=300, deadline=None)
@given(
    base=st.integers(0, 2000),
    start=st.integers(-6, 20),
    skew=st.one_of(st.just(0), st.integers(1, 239)),  # shifts every packet: one may then straddle base
    slots=st.lists(st.integers(0, 80), min_size=2, max_size=60),
    size=st.sampled_from([N, 80, 240, 7]),
    shift=st.sampled_from([0, 0, 0, 1, N // 2]),
    channel=st.integers(0, 1),
)
def test_place_many_on_a_lossy_stream_is_place_one_by_one(base: int, start: int, skew: int, slots: list[int],
                                                         size: int, shift: int, channel: int) -> None:
    """Streams of one packet length with lost packets (the grid path), and the near misses
    it must leave to the general one: a packet off the grid by `shift`, reordered or
    repeated slots; the first packets already final, whole (`start` packet times before
    base) or one cut by base (`skew`)."""
    batch = [(base + (start + k) * size + skew + (shift if i == len(slots) // 2 else 0),
              (np.arange(size) + 100 * i).astype(np.int16)) for i, k in enumerate(slots)]
    one, many = place_both(batch, base=base, channel=channel)
    assert_same(one, many)


def test_place_many_lossy_stream_keeps_the_gaps_silent() -> None:
    kept = [k for k in range(50) if k % 5 != 2]
    line = Timeline()
    line.place_many(1, [k * N for k in kept], [N] * len(kept), np.concatenate([values(k) for k in kept]))
    frames = line.take(50 * N)
    for k in range(50):
        expected = values(k) if k in kept else np.zeros(N, np.int16)
        assert np.array_equal(frames[k * N : (k + 1) * N, 1], expected)
    assert not frames[:, 0].any()


def test_place_many_lossy_stream_cut_by_base_keeps_the_tail_on_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that overtook a late, lossy burst: the packet across base keeps its tail,
    the earlier ones are counted late, and the general scatter is never needed."""
    base = 10 * N + 30
    kept = [k for k in range(25) if k % 3 != 2]
    packets = [(k * N, values(k)) for k in kept]  # slot 10 straddles base by 30 samples
    one, many = Timeline(), Timeline()
    for line in (one, many):
        line.discard(base)
    for pos, samples in packets:
        one.place(0, pos, samples)
    monkeypatch.setattr(Timeline, "_scatter", lambda *a: pytest.fail("left the grid path"))
    many.place_many(0, [p for p, _ in packets], [N] * len(packets), np.concatenate([v for _, v in packets]))
    assert many.dropped_late == 7 * N + 30  # slots 0, 1, 3, 4, 6, 7, 9 whole, and 10's head
    assert np.array_equal(many._buf[: N - 30, 0], values(10)[30:])
    assert_same(one, many)


def test_place_many_lossy_stream_starting_before_base_counts_the_late() -> None:
    base = 10 * N
    kept = [k for k in range(20) if k % 4 != 1]  # slots 0.. from base - 3N: three slots' worth are final
    packets = [(base + (k - 3) * N, values(k)) for k in kept]
    one, many = place_both(packets, base=base)
    assert_same(one, many)
    assert many.dropped_late == 2 * N  # slots 0 and 2 (slot 1 was lost)
