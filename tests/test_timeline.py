"""Exact sample positions: loss, reordering, gaps, SSRC changes, timestamp wrap, duplicates."""

from __future__ import annotations

import numpy as np
import pytest

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
