"""The recorder end to end: files, sidecars, pause modes, crashes, repair and full disks.

Every recorder here writes through a threaded `DiskWriter`, as in production: a test drains
it (`settle()`; `read` and `sidecar` do) before looking at the disk."""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.call import Call
from rtp import g711
from rtp import recorder as recorder_module
from rtp.disk_writer import DiskWriter
from rtp.recorder import JITTER_WINDOW_SECONDS, Recorder, repair
from rtp.wavfile import WavWriter
from tests.conftest import make_call

N = 160
T0 = 1000.0  # monotonic seconds at answer
WALL_T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


#: The recorder tests' call: its id names the files, its start dates their directory.
CALL_ID, STARTED = "c0ffee", datetime(2024, 5, 1, 11, 59, 50, tzinfo=UTC)


WRITERS: list[DiskWriter] = []  # the module's writer thread (fixture below)


@pytest.fixture(autouse=True, scope="module")
def disk_writer():
    """One writer thread for the module, as the media core has one for all calls; failed
    writes are retried every 10 ms so a test's outage ends quickly."""
    writer = DiskWriter(retry_seconds=0.01)
    WRITERS.append(writer)
    yield writer
    WRITERS.remove(writer)
    assert writer.close(5.0)


def eventually(condition, timeout: float = 5.0) -> bool:  # noqa: ANN001 - a callable
    """`condition()` became true within `timeout` (the writer thread got round to it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def settle() -> None:
    """Wait until the writer has performed every command so far."""
    assert WRITERS[-1].drain(5.0), "the writer did not finish in 5 s"


def recorder(directory: Path, call: Call, mode: str = "silence", **kw: object) -> Recorder:
    return Recorder(directory, call, mode, T0, wall_t0=WALL_T0, writer=WRITERS[-1], **kw)  # type: ignore[arg-type]


def make(tmp_path: Path, record: bool = True, mode: str = "silence", **kw: object) -> Recorder:
    return recorder(tmp_path, make_call(record=record, **{"call_id": CALL_ID, "started": STARTED, **kw}), mode)


def packet_value(channel: int, k: int) -> int:
    """A distinct, recognisable value per channel and packet."""
    return (k + 1) * (1 if channel == 0 else -1)


def feed(rec: Recorder, start: float, end: float, *, flush_every: float = 1.0,
         skip: frozenset[int] = frozenset(), channels: tuple[int, ...] = (0, 1)) -> None:
    """Send both channels' 20 ms packets for [start, end) seconds after T0, on time."""
    k0 = round(start / 0.02)
    last_flush = T0 + start
    for k in range(k0, round(end / 0.02)):
        t = T0 + k * 0.02
        if k not in skip:
            for ch in channels:
                rec.add(ch, 0x1000 + ch, k & 0xFFFF, (5000 + k * N) & 0xFFFFFFFF,
                        np.full(N, packet_value(ch, k), np.int16), t)
        if t - last_flush >= flush_every:
            rec.flush(t)
            last_flush = t


def read(rec: Recorder) -> np.ndarray:
    settle()
    data, rate = soundfile.read(str(rec.wav_path), dtype="int16", always_2d=True)
    assert rate == 8000 and data.shape[1] == 2
    return data


def sidecar(rec: Recorder) -> dict:
    settle()
    return json.loads(rec.json_path.read_text())


def expected_frames(start: float, end: float, skip: frozenset[int] = frozenset()) -> np.ndarray:
    out = np.zeros((round((end - start) * 8000), 2), np.int16)
    for k in range(round(start / 0.02), round(end / 0.02)):
        if k in skip:
            continue
        i = k * N - round(start * 8000)
        out[i : i + N, 0] = packet_value(0, k)
        out[i : i + N, 1] = packet_value(1, k)
    return out


# -- files and sidecar ----------------------------------------------------------------------


def test_recorded_call_has_wav_and_sidecar_where_the_contract_says(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 3)
    rec.close(T0 + 3)
    settle()
    assert rec.wav_path == tmp_path / "2024" / "05" / "01" / "c0ffee.wav"
    assert rec.json_path == tmp_path / "2024" / "05" / "01" / "c0ffee.json"
    info = soundfile.info(str(rec.wav_path))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 2, "PCM_16")
    assert np.array_equal(read(rec), expected_frames(0, 3))
    meta = sidecar(rec)
    assert meta["call_id"] == "c0ffee" and meta["direction"] == "inbound"
    assert meta["from"] == "sip:+441632960999@carrier"
    assert meta["to"] == "sip:441632960000@pbx.example"
    assert meta["ddi"] == "441632960000" and meta["user"] == "alice"
    assert meta["route"] == ["number:441632960000", "user:alice"]
    assert meta["started"] == "2024-05-01T12:00:00.000Z"
    assert meta["ended"] == "2024-05-01T12:00:03.000Z"
    assert (meta["sample_rate"], meta["channels"], meta["pause"]) == (8000, 2, "silence")
    assert meta["segments"] == [[0.0, 3.0]]
    assert meta["events"] == []
    settle()
    assert not list(tmp_path.rglob("*.tmp"))


def test_channel_one_is_the_external_party(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 1, channels=(0,))
    rec.close(T0 + 1)
    data = read(rec)
    assert (data[:, 0] > 0).all() and (data[:, 1] == 0).all()


def test_path_date_is_the_calls_start_date_in_utc(tmp_path: Path) -> None:
    plus2 = timezone(timedelta(hours=2))
    rec = make(tmp_path, started=datetime(2024, 5, 2, 1, 30, tzinfo=plus2))
    assert rec.wav_path.parent == tmp_path / "2024" / "05" / "01"


def test_never_recorded_call_leaves_no_file(tmp_path: Path) -> None:
    rec = make(tmp_path, record=False)
    feed(rec, 0, 3)
    rec.close(T0 + 3)
    settle()
    assert not rec.recording
    assert list(tmp_path.rglob("*")) == []


def test_organisation_switch_off_records_nothing(tmp_path: Path) -> None:
    rec = make(tmp_path, record=True, recording_enabled=False)
    feed(rec, 0, 1)
    rec.set_recording(True, T0 + 1, "alice")
    rec.close(T0 + 2)
    settle()
    assert list(tmp_path.rglob("*")) == []


def test_recording_from_a_later_resume_starts_the_file_then(tmp_path: Path) -> None:
    rec = make(tmp_path, record=False)
    feed(rec, 0, 2)
    settle()
    assert not rec.wav_path.exists()
    rec.set_recording(True, T0 + 2, "alice")
    settle()
    assert rec.recording and rec.wav_path.exists()
    feed(rec, 2, 4)
    rec.close(T0 + 4)
    assert np.array_equal(read(rec), expected_frames(2, 4))
    meta = sidecar(rec)
    assert meta["started"] == "2024-05-01T12:00:02.000Z"
    assert meta["segments"] == [[0.0, 2.0]]
    assert meta["events"] == [{"t": 0.0, "event": "resumed", "by": "alice"}]


def test_start_at_answer_is_idempotent(tmp_path: Path) -> None:
    rec = make(tmp_path)
    rec.set_recording(True, T0, None)  # the caller may also start it explicitly
    feed(rec, 0, 1)
    rec.close(T0 + 1)
    assert sidecar(rec)["events"] == [] and sidecar(rec)["segments"] == [[0.0, 1.0]]


def test_sidecar_is_written_at_start_with_ended_null(tmp_path: Path) -> None:
    rec = make(tmp_path)
    meta = sidecar(rec)
    assert meta["ended"] is None and meta["segments"] == [[0.0, None]]


def test_pause_silence_keeps_the_call_length(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 2)
    rec.set_recording(False, T0 + 2, "alice")
    assert sidecar(rec)["events"] == [{"t": 2.0, "event": "paused", "by": "alice"}]
    feed(rec, 2, 3)
    rec.set_recording(True, T0 + 3, "alice")
    feed(rec, 3, 5)
    rec.close(T0 + 5)
    expected = expected_frames(0, 5)
    expected[16000:24000] = 0
    assert np.array_equal(read(rec), expected)
    meta = sidecar(rec)
    assert meta["pause"] == "silence"
    assert meta["segments"] == [[0.0, 2.0], [3.0, 5.0]]
    assert meta["events"] == [
        {"t": 2.0, "event": "paused", "by": "alice"},
        {"t": 3.0, "event": "resumed", "by": "alice"},
    ]


def test_pause_skip_leaves_the_span_out(tmp_path: Path) -> None:
    rec = make(tmp_path, mode="skip")
    feed(rec, 0, 2)
    rec.set_recording(False, T0 + 2, "alice")
    feed(rec, 2, 3.5)
    rec.set_recording(True, T0 + 3.5, "bob")
    feed(rec, 3.5, 5)
    rec.close(T0 + 5)
    expected = np.concatenate([expected_frames(0, 2), expected_frames(3.5, 5)])
    assert np.array_equal(read(rec), expected)
    meta = sidecar(rec)
    assert meta["pause"] == "skip"
    assert meta["segments"] == [[0.0, 2.0], [2.0, 3.5]]
    assert meta["events"] == [
        {"t": 2.0, "event": "paused", "by": "alice"},
        {"t": 2.0, "event": "resumed", "by": "bob"},
    ]


def test_paused_at_close_ends_the_file_at_close_in_silence_mode(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 1)
    rec.set_recording(False, T0 + 1, "alice")
    feed(rec, 1, 3)
    rec.close(T0 + 3)
    data = read(rec)
    assert data.shape[0] == 24000 and not data[8000:].any()
    assert sidecar(rec)["segments"] == [[0.0, 1.0]]


def test_one_file_however_often_paused(tmp_path: Path) -> None:
    rec = make(tmp_path, mode="skip")
    for i in range(10):
        feed(rec, i, i + 0.5)
        rec.set_recording(False, T0 + i + 0.5, "alice")
        rec.set_recording(True, T0 + i + 1, "alice")
    rec.close(T0 + 10)
    settle()
    assert len(list(tmp_path.rglob("*.wav"))) == 1
    assert read(rec).shape[0] == 10 * 4000
    assert len(sidecar(rec)["segments"]) == 11  # the last one opened at 10 s, closed empty


# -- timeline through the recorder -----------------------------------------------------------


def test_lost_packets_are_silence_not_a_shift(tmp_path: Path) -> None:
    rec = make(tmp_path)
    lost = frozenset({3, 4, 50})
    feed(rec, 0, 2, skip=lost)
    rec.close(T0 + 2)
    assert np.array_equal(read(rec), expected_frames(0, 2, lost))


def test_three_second_silence_keeps_both_channels_aligned(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 1)
    feed(rec, 1, 4, channels=(1,))  # channel 0 sends nothing for 3 s
    feed(rec, 4, 5)
    rec.close(T0 + 5)
    data = read(rec)
    expected = expected_frames(0, 5)
    expected[8000:32000, 0] = 0
    assert np.array_equal(data, expected)


def test_late_packet_within_window_lands_in_place(tmp_path: Path) -> None:
    rec = make(tmp_path)
    v = lambda k: np.full(N, k + 1, np.int16)  # noqa: E731
    for k in range(50):
        if k == 20:
            continue
        rec.add(0, 9, k, k * N, v(k), T0 + k * 0.02)
        if k == 30:
            rec.flush(T0 + k * 0.02)
    rec.add(0, 9, 20, 20 * N, v(20), T0 + 20 * 0.02 + 0.19)  # 190 ms late, after a flush
    rec.close(T0 + 1)
    assert np.array_equal(read(rec)[: 50 * N, 0], np.repeat(np.arange(1, 51, dtype=np.int16), N))


def test_packet_later_than_the_window_is_dropped_not_shifted(tmp_path: Path) -> None:
    rec = make(tmp_path)
    for k in range(50):
        if k != 5:
            rec.add(0, 9, k, k * N, np.full(N, 1, np.int16), T0 + k * 0.02)
    rec.flush(T0 + 0.99)
    rec.add(0, 9, 5, 5 * N, np.full(N, 1, np.int16), T0 + 0.99)
    rec.close(T0 + 1)
    data = read(rec)[:, 0]
    assert not data[5 * N : 6 * N].any() and data[6 * N : 50 * N].all()


def test_ssrc_change_mid_call(tmp_path: Path) -> None:
    rec = make(tmp_path)
    for k in range(25):
        rec.add(0, 0xA, k, k * N, np.full(N, 1, np.int16), T0 + k * 0.02)
    # New source at 0.6 s (100 ms of nothing), unrelated seq/timestamp.
    for j in range(20):
        rec.add(0, 0xB, 30000 + j, 7_777_777 + j * N, np.full(N, 2, np.int16), T0 + 0.6 + j * 0.02)
    rec.close(T0 + 1)
    data = read(rec)[:, 0]
    assert (data[:4000] == 1).all()
    assert not data[4000:4800].any()
    assert (data[4800:8000] == 2).all()


def test_timestamp_wrap_mid_call(tmp_path: Path) -> None:
    rec = make(tmp_path)
    start = 2**32 - 10 * N
    for k in range(50):
        rec.add(1, 3, k, (start + k * N) & 0xFFFFFFFF, np.full(N, k + 1, np.int16), T0 + k * 0.02)
    rec.close(T0 + 1)
    assert np.array_equal(read(rec)[:, 1], np.repeat(np.arange(1, 51, dtype=np.int16), N))


def test_duplicates_do_not_double(tmp_path: Path) -> None:
    rec = make(tmp_path)
    for k in range(50):
        for _ in range(2):
            rec.add(0, 3, k, k * N, np.full(N, 100, np.int16), T0 + k * 0.02)
        rec.add(0, 3, k, k * N, np.full(N, 100, np.int16), T0 + k * 0.02 + 0.05)
    rec.close(T0 + 1)
    data = read(rec)
    assert data.shape[0] == 8000 and (data[:, 0] == 100).all()


@settings(max_examples=60, deadline=None)
@given(
    delays=st.lists(st.floats(0, JITTER_WINDOW_SECONDS - 0.002), min_size=2 * 60, max_size=2 * 60),
    flushes=st.lists(st.floats(0, 1.3), max_size=5),
)
def test_any_arrival_order_within_the_window_gives_the_same_wav(
    tmp_path_factory: pytest.TempPathFactory, delays: list[float], flushes: list[float]
) -> None:
    """Packets delayed by anything under the window, in whatever order that makes, and
    flushed at any moment, give the file an on-time, in-order stream gives."""
    count = 60
    rng = np.random.default_rng(7)
    audio = rng.integers(-20000, 20000, size=(2, count, N)).astype(np.int16)
    packets = []
    for ch in (0, 1):
        for k in range(count):
            delay = 0.0 if k == 0 else delays[ch * count + k]  # the anchor packet is on time
            packets.append((T0 + k * 0.02 + delay, ch, k))
    packets += [(T0 + f, -1, -1) for f in flushes]
    packets.sort()

    def run(order: list[tuple[float, int, int]], directory: Path) -> np.ndarray:
        rec = recorder(directory, make_call(CALL_ID, started=STARTED))
        for arrival, ch, k in order:
            if ch < 0:
                rec.flush(arrival)
            else:
                rec.add(ch, 50 + ch, 1000 + k, 99 + k * N, audio[ch, k], arrival)
        rec.close(T0 + 1.5)
        return read(rec)

    on_time = sorted((T0 + k * 0.02, ch, k) for ch in (0, 1) for k in range(count))
    reference = run(on_time, tmp_path_factory.mktemp("ref"))
    assert np.array_equal(run(packets, tmp_path_factory.mktemp("jit")), reference)
    assert np.array_equal(reference[: count * N, 0], audio[0].reshape(-1))


# -- crashes and repair ----------------------------------------------------------------------


def test_close_finalises(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 2)
    rec.close(T0 + 2)
    settle()
    size = rec.wav_path.stat().st_size
    header = rec.wav_path.read_bytes()[:44]
    assert struct.unpack_from("<I", header, 4)[0] == size - 8
    assert struct.unpack_from("<I", header, 40)[0] == size - 44 == 16000 * 4
    assert sidecar(rec)["ended"] is not None
    rec.close(T0 + 3)  # twice is harmless
    rec.flush(T0 + 4)
    rec.add(0, 1, 1, 1, np.ones(N, np.int16), T0 + 4)
    settle()
    assert rec.wav_path.stat().st_size == size


def test_crash_without_close_leaves_a_playable_file(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 3.5, flush_every=1.0)
    # kill -9 here: no close. Everything older than the window at the last flush is there.
    data = read(rec)
    last_flush = 3.0
    frames = round((last_flush - JITTER_WINDOW_SECONDS) * 8000)
    assert data.shape[0] == frames
    assert np.array_equal(data, expected_frames(0, 3.5)[:frames])
    assert sidecar(rec)["ended"] is None


def test_repair_fixes_a_header_left_with_zero_sizes(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 2.5)
    rec.flush(T0 + 2.5)
    settle()  # what the writer had done when the process died
    del rec  # crash
    wav = tmp_path / "2024" / "05" / "01" / "c0ffee.wav"
    with open(wav, "r+b") as f:  # a writer that died before ever patching the sizes,
        f.seek(4)
        f.write(b"\0\0\0\0")
        f.seek(40)
        f.write(b"\0\0\0\0")
        f.seek(0, os.SEEK_END)
        f.write(b"\x01\x02\x03")  # and a frame cut off mid-write
    assert repair(tmp_path) == [wav]
    data, rate = soundfile.read(str(wav), dtype="int16", always_2d=True)
    assert data.shape[0] == round(2.3 * 8000)
    assert np.array_equal(data, expected_frames(0, 2.3))
    meta = json.loads(wav.with_suffix(".json").read_text())
    assert meta["ended"] is None and meta["recovered"] is True
    assert meta["segments"] == [[0.0, 2.3]]
    assert repair(tmp_path) == []  # already recovered


def test_repair_leaves_finalised_recordings_alone(tmp_path: Path) -> None:
    rec = make(tmp_path)
    feed(rec, 0, 1)
    rec.close(T0 + 1)
    settle()
    before = rec.wav_path.read_bytes(), rec.json_path.read_text()
    assert repair(tmp_path) == []
    assert (rec.wav_path.read_bytes(), rec.json_path.read_text()) == before
    assert repair(tmp_path / "nowhere") == []


def test_repair_of_a_header_only_file(tmp_path: Path) -> None:
    rec = make(tmp_path)
    wav = rec.wav_path
    settle()
    del rec
    assert repair(tmp_path) == [wav]
    assert soundfile.info(str(wav)).frames == 0


# -- full disk -------------------------------------------------------------------------------


def test_disk_full_once_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    real_write = WavWriter.write
    failures = {"left": 1}

    def flaky(self: WavWriter, frames: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        real_write(self, frames)  # type: ignore[arg-type]

    rec = make(tmp_path)
    feed(rec, 0, 1.5)
    settle()
    monkeypatch.setattr(WavWriter, "write", flaky)
    with caplog.at_level(logging.ERROR):
        feed(rec, 1.5, 6)  # one flush fails, the next ones catch up
        rec.close(T0 + 6)
        settle()
    assert failures["left"] == 0
    assert np.array_equal(read(rec), expected_frames(0, 6))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "c0ffee" in errors[0].getMessage()


def test_disk_full_for_long_keeps_alignment_and_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer whose memory bound is 2 s of this call: past it the oldest waiting audio
    becomes silence, logged once; the newest survives and nothing shifts."""
    bound = 2 * 8000 * 4
    writer = DiskWriter(retry_seconds=0.01, max_backlog_bytes=bound)
    real_write = WavWriter.write
    state = {"full": False}

    def maybe(self: WavWriter, frames: object) -> None:
        if state["full"]:
            raise OSError(28, "No space left on device")
        real_write(self, frames)  # type: ignore[arg-type]

    monkeypatch.setattr(WavWriter, "write", maybe)
    rec = Recorder(tmp_path, make_call(CALL_ID, started=STARTED), "silence", T0, wall_t0=WALL_T0, writer=writer)
    feed(rec, 0, 2)
    assert writer.drain(5.0)
    state["full"] = True
    with caplog.at_level(logging.ERROR):
        for second in range(2, 8):
            feed(rec, second, second + 1)
            rec.flush(T0 + second + 1)
            assert not writer.drain(0.05)  # the disk refuses: the audio waits ...
            assert eventually(lambda: writer.stats().backlog_bytes <= bound)  # ... within the bound
    stats = writer.stats()
    assert stats.failing and stats.backlog_seconds == pytest.approx(2.0, abs=0.1) and stats.dropped_seconds > 3
    assert len([r for r in caplog.records if "event=backlog-full" in r.getMessage()]) == 1
    state["full"] = False  # space returns: the next retry writes what waited
    assert writer.drain(5.0)
    feed(rec, 8, 10)
    rec.close(T0 + 10)
    assert writer.close(5.0)
    data = read(rec)
    assert data.shape[0] == 80000  # nothing shifted: the file is the call's length
    expected = expected_frames(0, 10)
    assert np.array_equal(data[:6400], expected[:6400])  # flushed at 1 s, before the outage
    newest = round((8 - JITTER_WINDOW_SECONDS) * 8000)  # what the last flush in the outage finished
    assert np.array_equal(data[newest - 16000 :], expected[newest - 16000 :])  # the newest 2 s survived, and after
    assert not data[6400 : newest - 16000 - 1600].any()  # older outage audio: silence, same length
    meta = sidecar(rec)
    assert meta["silenced_s"] == rec.silenced_frames / 8000 > 3 and "unwritten_s" not in meta
    assert writer.stats().backlog_bytes == 0


def test_file_creation_failure_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = WavWriter.__init__
    failures = {"left": 2}

    def flaky_init(self: WavWriter, *args: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        real_init(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(WavWriter, "__init__", flaky_init)
    rec = make(tmp_path)
    assert not rec.wav_path.exists()
    feed(rec, 0, 3)
    rec.close(T0 + 3)
    assert np.array_equal(read(rec), expected_frames(0, 3))
    assert sidecar(rec)["ended"] is not None


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    first = make(tmp_path)
    feed(first, 0, 1)
    first.close(T0 + 1)
    settle()
    before = first.wav_path.read_bytes()
    again = make(tmp_path)
    feed(again, 0, 2)
    again.close(T0 + 2)
    settle()
    assert first.wav_path.read_bytes() == before


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make(tmp_path, mode="mute")
    with pytest.raises(ValueError):
        make(tmp_path, call_id="../etc")
    rec = make(tmp_path)
    with pytest.raises(ValueError):
        rec.add(2, 1, 1, 1, np.ones(N, np.int16), T0)


# -- add_g711: raw G.711 kept until the flush, then decoded and placed in one go ------------
#
# Each scenario is a script of events run twice, once through add() with every packet
# decoded on arrival (the recorder as it was) and once through add_g711(): the WAV files
# must be the same bytes, the sidecars and the drop and resync counts the same.

Event = tuple  # ("rtp", ch, ssrc, seq, ts, payload, pt, t) | ("flush", t) | ("set", on, t, by)


def run_script(directory: Path, events: list[Event], end: float, *, g711_path: bool,
               mode: str = "silence", record: bool = True) -> Recorder:
    rec = recorder(directory, make_call(CALL_ID, record=record, started=STARTED), mode)
    for event in events:
        if event[0] == "rtp":
            _, ch, ssrc, seq, ts, payload, pt, t = event
            if g711_path:
                rec.add_g711(ch, ssrc, seq, ts, payload, pt, t)
            else:
                rec.add(ch, ssrc, seq, ts, g711.decode(payload, pt), t)
        elif event[0] == "flush":
            rec.flush(event[1])
        else:
            rec.set_recording(event[1], event[2], event[3])
    rec.close(end)
    settle()
    return rec


def assert_g711_path_matches(tmp_path: Path, events: list[Event], end: float, **kw: object) -> bytes:
    """Both paths give byte-identical WAVs (and sidecars, counters); returns the WAV."""
    old = run_script(tmp_path / "add", events, end, g711_path=False, **kw)  # type: ignore[arg-type]
    new = run_script(tmp_path / "add_g711", events, end, g711_path=True, **kw)  # type: ignore[arg-type]
    assert new.wav_path.read_bytes() == old.wav_path.read_bytes()
    assert new.json_path.read_bytes() == old.json_path.read_bytes()
    assert (new._timeline.dropped_late, new._timeline.dropped_ahead) == (
        old._timeline.dropped_late, old._timeline.dropped_ahead)
    assert [c.resyncs for c in new._clocks()] == [c.resyncs for c in old._clocks()]
    return old.wav_path.read_bytes()


def speech(k: int, ch: int, n: int = N, pt: int = g711.PCMU) -> bytes:
    """A distinct payload per packet: a ramp that starts at a value of its own."""
    samples = ((np.arange(n) * 37 + k * 1009 + ch * 5003) % 20000 - 10000).astype(np.int16)
    return g711.encode(samples, pt)


def stream(start: float, end: float, *, channels: tuple[int, ...] = (0, 1), pt: int = g711.PCMU,
           ssrc: int = 0x1000, seq0: int = 1000, ts0: int = 5000, delays: dict[tuple[int, int], float] | None = None,
           flush_every: float = 1.0, n: int = N) -> list[Event]:
    """On-time 20 ms packets for [start, end) s after T0, flushed as the relay does; a
    packet in `delays` arrives that much later (re-sorted by arrival)."""
    delays = delays or {}
    events: list[tuple[float, int, Event]] = []
    for k in range(round(start / 0.02), round(end / 0.02)):
        for ch in channels:
            t = T0 + k * 0.02 + delays.get((ch, k), 0.0)
            events.append((t, 1, ("rtp", ch, ssrc + ch, (seq0 + k) & 0xFFFF, (ts0 + k * n) & 0xFFFFFFFF,
                                  speech(k, ch, n, pt), pt, t)))
    t = T0 + start + flush_every
    while t < T0 + end:
        events.append((t, 0, ("flush", t)))
        t += flush_every
    events.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in events]


def test_g711_in_order(tmp_path: Path) -> None:
    wav = assert_g711_path_matches(tmp_path, stream(0, 3), T0 + 3)
    assert len(wav) == 44 + 3 * 8000 * 4


def test_g711_reordered_within_the_window(tmp_path: Path) -> None:
    delays = {(ch, k): 0.03 + 0.15 * ((k * 7 + ch) % 5) / 5 for ch in (0, 1) for k in range(1, 150) if k % 3}
    events = stream(0, 3, delays=delays)
    assert [e[3] for e in events if e[0] == "rtp" and e[1] == 0] != sorted(
        e[3] for e in events if e[0] == "rtp" and e[1] == 0)  # really out of order
    assert_g711_path_matches(tmp_path, events, T0 + 3.5)


def test_g711_duplicates_overwrite_later_copy_wins(tmp_path: Path) -> None:
    """Duplicates (same seq and timestamp) land on the same samples; where a copy differs,
    the later one wins, as a second slice assignment would."""
    events: list[Event] = []
    for e in stream(0, 2):
        events.append(e)
        if e[0] == "rtp" and e[3] % 4 == 0:
            _, ch, ssrc, seq, ts, payload, pt, t = e
            events.append(("rtp", ch, ssrc, seq, ts, payload, pt, t + 0.001))
            events.append(("rtp", ch, ssrc, seq, ts, speech(seq + 77, ch), pt, t + 0.002))
    assert_g711_path_matches(tmp_path, events, T0 + 2)


def test_g711_overlapping_timestamps_later_packet_wins(tmp_path: Path) -> None:
    """A sender whose packets overlap (timestamp steps shorter than the payload)."""
    events = [("rtp", 0, 7, k, k * 100, speech(k, 0), g711.PCMU, T0 + k * 0.0125) for k in range(150)]
    events.insert(40, ("flush", T0 + 0.5))
    assert_g711_path_matches(tmp_path, events, T0 + 2)


def test_g711_late_packets_beyond_the_window_are_dropped(tmp_path: Path) -> None:
    delays = {(0, 40): 0.35, (1, 45): 0.5, (0, 90): 1.2, (1, 91): 0.25}
    events = stream(0, 3, delays=delays, flush_every=0.5)
    old = run_script(tmp_path / "probe", events, T0 + 3, g711_path=True)
    assert old._timeline.dropped_late > 0  # the scenario really drops some
    assert_g711_path_matches(tmp_path, events, T0 + 3)


def test_g711_three_second_gap(tmp_path: Path) -> None:
    running = stream(0, 1) + stream(4, 5)  # timestamps ran on through the gap
    assert_g711_path_matches(tmp_path / "running", running, T0 + 5)
    frozen = stream(0, 1) + [  # the sender went on from where it stopped: a resync
        ("rtp", ch, 0x1000 + ch, 1050 + j, 5000 + (50 + j) * N, speech(j, ch), g711.PCMU, T0 + 4 + j * 0.02)
        for j in range(50) for ch in (0, 1)
    ]
    assert_g711_path_matches(tmp_path / "frozen", frozen + [("flush", T0 + 4.5)], T0 + 5)


def test_g711_ssrc_change(tmp_path: Path) -> None:
    events = stream(0, 0.6) + stream(0.7, 2, ssrc=0xBEEF00, seq0=30000, ts0=7_777_777)
    assert_g711_path_matches(tmp_path, events, T0 + 2)


@pytest.mark.parametrize("mode", ["silence", "skip"])
def test_g711_toggle_mid_batch_cuts_at_the_right_sample(tmp_path: Path, mode: str) -> None:
    """*1 between flushes: the pause and resume cut exactly where add() would."""
    events = stream(0, 4)
    for at, on in ((1.37, False), (2.113, True), (3.5, False)):
        i = next(i for i, e in enumerate(events) if e[0] == "rtp" and e[-1] > T0 + at)
        events.insert(i, ("set", on, T0 + at, "alice"))
    assert_g711_path_matches(tmp_path, events, T0 + 4, mode=mode)


def test_g711_start_by_star_one_mid_batch(tmp_path: Path) -> None:
    events = stream(0, 2)
    i = next(i for i, e in enumerate(events) if e[0] == "rtp" and e[-1] > T0 + 0.73)
    events.insert(i, ("set", True, T0 + 0.73, "alice"))
    assert_g711_path_matches(tmp_path, events, T0 + 2, record=False)


def test_g711_pcma_and_pcmu_mixed(tmp_path: Path) -> None:
    """Channel 0 PCMU, channel 1 PCMA, and a re-INVITE switching channel 0 to PCMA (and
    back) between flushes, with stragglers of the old codec still arriving."""
    events = stream(0, 1, channels=(0,)) + stream(0, 3, channels=(1,), pt=g711.PCMA)
    events += stream(1, 2, channels=(0,), pt=g711.PCMA, delays={(0, 52): 0.07})
    events += stream(2, 3, channels=(0,), delays={(0, 101): 0.05})
    events.sort(key=lambda e: (e[-1], e[0] != "flush"))
    assert_g711_path_matches(tmp_path, events, T0 + 3)


def test_g711_odd_payload_lengths(tmp_path: Path) -> None:
    """10, 30 and 33 ms packets, a 1-byte packet and an empty one (ignored)."""
    events = stream(0, 1, n=80) + stream(1, 2, n=240, ssrc=0x2000, ts0=1) + stream(2, 3, n=264, ssrc=0x3000)
    events += [("rtp", 1, 0x77, 9, 9, b"\x12", g711.PCMA, T0 + 3.2), ("rtp", 0, 0x77, 9, 9, b"", g711.PCMU, T0 + 3.3)]
    events.sort(key=lambda e: (e[-1], e[0] != "flush"))
    assert_g711_path_matches(tmp_path, events, T0 + 4)


def test_g711_waiting_packets_are_bounded(tmp_path: Path) -> None:
    """Without flushes (or under a flood) no more than MAX_WAITING_PACKETS wait per channel."""
    events = [("rtp", 0, 5, k, k * 40, speech(k, 0, 40), g711.PCMU, T0 + k * 0.005)
              for k in range(3 * recorder_module.MAX_WAITING_PACKETS + 5)]
    rec = run_script(tmp_path / "probe", events[:-1], T0 + 9, g711_path=True)
    assert rec._waiting_pos == ([], [])
    live = recorder(tmp_path / "live", make_call(CALL_ID, started=STARTED))
    for _, ch, ssrc, seq, ts, payload, pt, t in events:
        live.add_g711(ch, ssrc, seq, ts, payload, pt, t)
        assert len(live._waiting_pos[0]) < recorder_module.MAX_WAITING_PACKETS
    assert_g711_path_matches(tmp_path, events, T0 + 9)


def test_g711_payload_views_are_copied(tmp_path: Path) -> None:
    """A memoryview of a receive buffer the caller reuses must not change the recording."""
    buffer = bytearray(speech(0, 0))
    rec = make(tmp_path)
    rec.add_g711(0, 1, 1, 0, memoryview(buffer), g711.PCMU, T0)
    buffer[:] = b"\xff" * N
    rec.close(T0 + 0.5)
    assert np.array_equal(read(rec)[:N, 0], g711.decode(speech(0, 0), g711.PCMU))


def test_g711_bad_arguments_are_rejected(tmp_path: Path) -> None:
    rec = make(tmp_path)
    with pytest.raises(ValueError):
        rec.add_g711(2, 1, 1, 1, b"\xff" * N, g711.PCMU, T0)
    with pytest.raises(ValueError):
        rec.add_g711(0, 1, 1, 1, b"\xff" * N, 18, T0)  # G.729 is relayed, never decoded
    rec.add_g711(0, 1, 1, 1, b"", 18, T0)  # empty: ignored before anything else


def test_g711_after_close_or_with_recording_off_does_nothing(tmp_path: Path) -> None:
    off = recorder(tmp_path, make_call(CALL_ID, enabled=False, started=STARTED))
    off.add_g711(0, 1, 1, 1, b"\xff" * N, g711.PCMU, T0)
    assert off._waiting_pos == ([], [])
    rec = make(tmp_path)
    rec.close(T0 + 1)
    rec.add_g711(0, 1, 1, 1, b"\xff" * N, g711.PCMU, T0 + 1)
    assert rec._waiting_pos == ([], [])


@settings(max_examples=60, deadline=None)
@given(
    delays=st.lists(st.floats(0, JITTER_WINDOW_SECONDS - 0.002), min_size=2 * 60, max_size=2 * 60),
    dups=st.lists(st.tuples(st.integers(0, 119), st.floats(0, JITTER_WINDOW_SECONDS - 0.002)), max_size=30),
    flushes=st.lists(st.floats(0, 1.3), max_size=5),
    pcma=st.booleans(),
)
def test_g711_any_order_and_duplicates_within_the_window_give_the_sequential_wav(
    tmp_path_factory: pytest.TempPathFactory, delays: list[float], dups: list[tuple[int, float]],
    flushes: list[float], pcma: bool,
) -> None:
    """Jittered, reordered and duplicated packets fed as raw G.711, flushed at any moment,
    give the WAV of the same packets decoded and added one by one, on time and in order."""
    count = 60
    pt = g711.PCMA if pcma else g711.PCMU
    arrivals: list[tuple[float, int, int]] = []
    for ch in (0, 1):
        for k in range(count):
            delay = 0.0 if k == 0 else delays[ch * count + k]  # the anchor packet is on time
            arrivals.append((T0 + k * 0.02 + delay, ch, k))
    for i, delay in dups:
        ch, k = divmod(i, count)
        arrivals.append((T0 + k * 0.02 + delay, ch, k))
    arrivals.sort()

    def events_for(order: list[tuple[float, int, int]], flush_at: list[float]) -> list[Event]:
        timed = [(t, 1, ("rtp", ch, 50 + ch, 1000 + k, 99 + k * N, speech(k, ch, N, pt), pt, t)) for t, ch, k in order]
        timed += [(T0 + f, 0, ("flush", T0 + f)) for f in flush_at]
        timed.sort(key=lambda e: (e[0], e[1]))
        return [e for _, _, e in timed]

    on_time = sorted((T0 + k * 0.02, ch, k) for ch in (0, 1) for k in range(count))
    reference = run_script(tmp_path_factory.mktemp("ref"), events_for(on_time, []), T0 + 1.5, g711_path=False)
    jittered = events_for(arrivals, flushes)
    batched = run_script(tmp_path_factory.mktemp("g711"), jittered, T0 + 1.5, g711_path=True)
    one_by_one = run_script(tmp_path_factory.mktemp("add"), jittered, T0 + 1.5, g711_path=False)
    assert batched.wav_path.read_bytes() == one_by_one.wav_path.read_bytes() == reference.wav_path.read_bytes()


def test_g711_then_add_on_the_same_channel_keeps_arrival_order(tmp_path: Path) -> None:
    """Decoded samples added after waiting G.711 of the same slot overwrite it, as they
    would have had the G.711 been placed on arrival."""
    rec = make(tmp_path)
    rec.add_g711(0, 1, 1, 0, speech(0, 0), g711.PCMU, T0)
    rec.add_g711(0, 1, 2, N, speech(1, 0), g711.PCMU, T0 + 0.02)
    rec.add(0, 1, 2, N, np.full(N, 1234, np.int16), T0 + 0.03)  # a duplicate of packet 2
    rec.add_g711(0, 1, 2, N, speech(1, 0)[:80], g711.PCMU, T0 + 0.04)  # and half of it again
    rec.close(T0 + 0.5)
    data = read(rec)[:, 0]
    assert np.array_equal(data[:N], g711.decode(speech(0, 0), g711.PCMU))
    assert np.array_equal(data[N : N + 80], g711.decode(speech(1, 0)[:80], g711.PCMU))
    assert (data[N + 80 : 2 * N] == 1234).all()


def test_a_flush_seventy_seconds_late_on_a_healthy_disk_keeps_every_sample(tmp_path: Path, caplog) -> None:
    """An overloaded loop may flush a minute late: what the timeline held (its own bound is
    60 s ahead of the last flush) is written, not silenced as if the disk had failed (the
    60 s memory bound on finished audio is for a disk that refuses writes)."""
    rec = make(tmp_path)
    with caplog.at_level(logging.ERROR):
        feed(rec, 0.0, 70.0, flush_every=1000.0)
        rec.close(T0 + 70.0)
    data = read(rec)
    assert len(data) == 70 * 8000
    assert np.array_equal(data[: 60 * 8000], expected_frames(0.0, 60.0))
    assert rec.silenced_frames == 0 and "disk unavailable" not in caplog.text
