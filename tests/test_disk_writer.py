"""The recorder's disk side (rtp.disk_writer): nothing on the loop's thread, order per file,
durability before on_finalised, and full disks: injected failures and a real 2 MB tmpfs."""

from __future__ import annotations

import asyncio
import builtins
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile

from rtp import disk_writer as disk_writer_module
from rtp.call import Call
from rtp.disk_writer import RESERVE_NAME, DiskWriter, reserve_path
from rtp.recorder import JITTER_WINDOW_SECONDS, Recorder, repair
from rtp.wavfile import WavWriter

N = 160
T0 = 1000.0
WALL_T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def make_call(call_id: str = "disk1") -> Call:
    return Call(call_id=call_id, direction="inbound", from_uri="sip:+441632960999@carrier",
                to_uri="sip:441632960000@pbx.example", ddi="441632960000", user="alice",
                started=datetime(2024, 5, 1, 11, 59, 50, tzinfo=UTC), record_at_answer=True)


def value(k: int, ch: int) -> int:
    return (k % 30000 + 1) * (1 if ch == 0 else -1)


def feed(rec: Recorder, start: float, end: float) -> None:
    """Both channels' 20 ms packets for [start, end) s, a flush each second, as the relay does."""
    for k in range(round(start / 0.02), round(end / 0.02)):
        t = T0 + k * 0.02
        for ch in (0, 1):
            rec.add(ch, 0x100 + ch, k & 0xFFFF, k * N, np.full(N, value(k, ch), np.int16), t)
        if k % 50 == 49:
            rec.flush(t)


def expected(start: float, end: float) -> np.ndarray:
    out = np.zeros((round((end - start) * 8000), 2), np.int16)
    for k in range(round(start / 0.02), round(end / 0.02)):
        i = k * N - round(start * 8000)
        out[i : i + N] = (value(k, 0), value(k, 1))
    return out


def read(path: Path) -> np.ndarray:
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    assert rate == 8000
    return data


def meta(rec: Recorder) -> dict:
    return json.loads(rec.json_path.read_text())


def ended(rec: Recorder) -> bool:
    """The recording's sidecar has `ended` set (the writer got that far)."""
    try:
        return meta(rec)["ended"] is not None
    except (OSError, ValueError):
        return False


# -- the loop's thread never touches the disk --------------------------------------------------


IO_CALLS = ("open", "pwrite", "pwritev", "ftruncate", "fsync", "fdatasync", "replace", "mkdir", "unlink")


def test_set_recording_flush_and_close_do_no_io_on_the_calling_thread(tmp_path: Path, monkeypatch) -> None:
    """Every file system call the recording makes comes from the writer's threads; and while
    the disk hangs (the writer blocked in a call), the recorder's calls still return."""
    calls: list[tuple[str, str]] = []
    for name in IO_CALLS:
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name, **k: (
            calls.append((_name, threading.current_thread().name)), _real(*a, **k))[1])
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: (
        calls.append(("builtins.open", threading.current_thread().name)), real_open(*a, **k))[1])
    hang = threading.Event()
    real_write = WavWriter.write

    def hanging(self, frames):  # the disk stops answering: the writer waits in a system call
        hang.wait(10)
        real_write(self, frames)

    monkeypatch.setattr(WavWriter, "write", hanging)
    writer = DiskWriter(tmp_path)
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)  # starts: open
    feed(rec, 0, 2)
    rec.set_recording(False, T0 + 2, "alice")
    feed(rec, 2, 3)
    rec.set_recording(True, T0 + 3, "alice")
    feed(rec, 3, 4)
    rec.close(T0 + 4)  # returns while the writer is stuck on the first block
    mine = threading.current_thread().name
    assert [c for c in calls if c[1] == mine] == []
    assert writer.stats().queue_depth > 0 and not writer.idle()
    hang.set()
    assert writer.close(5.0)
    assert {thread for _, thread in calls} >= {"recordings-writer", "recordings-sync"}
    want = expected(0, 4)
    want[2 * 8000 : 3 * 8000] = 0
    assert np.array_equal(read(rec.wav_path), want)
    assert meta(rec)["segments"] == [[0.0, 2.0], [3.0, 4.0]] and meta(rec)["ended"] is not None


def test_many_recordings_interleaved_each_in_order(tmp_path: Path) -> None:
    """One writer for forty calls flushed in turn: every file is its own audio, in order,
    even when the writer is behind and joins several blocks into one pwritev."""
    writer = DiskWriter(tmp_path)
    recs = [Recorder(tmp_path, make_call(f"many{i}"), "silence", T0, wall_t0=WALL_T0, writer=writer) for i in range(40)]
    for second in range(3):
        for rec in recs:
            feed(rec, second, second + 1)
    for rec in recs:
        rec.close(T0 + 3)
    assert writer.close(10.0)
    for rec in recs:
        assert np.array_equal(read(rec.wav_path), expected(0, 3))
    stats = writer.stats()
    assert (stats.queue_depth, stats.backlog_bytes, stats.backlog_seconds, stats.recordings) == (0, 0, 0.0, 0)


def test_a_kill_9_leaves_everything_the_writer_was_given_up_to_the_last_flush(tmp_path: Path) -> None:
    """A real SIGKILL of a process recording through the writer thread, once the writer has
    done its work: the WAV plays with everything up to the last flush; repair() finalises it."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from tests.test_disk_writer import Recorder, DiskWriter, make_call, feed, T0, WALL_T0
        writer = DiskWriter({str(tmp_path)!r})
        rec = Recorder({str(tmp_path)!r}, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)
        feed(rec, 0, 3.5)  # flushed at 1, 2 and 3 s
        writer.drain(5)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    wav = tmp_path / "2024" / "05" / "01" / "disk1.wav"
    frames = round((2.98 - JITTER_WINDOW_SECONDS) * 8000)  # the last flush ran at 2.98 s
    assert np.array_equal(read(wav), expected(0, 3.5)[:frames])
    assert json.loads(wav.with_suffix(".json").read_text())["ended"] is None
    assert repair(tmp_path) == [wav]
    assert json.loads(wav.with_suffix(".json").read_text())["recovered"] is True


# -- on_finalised --------------------------------------------------------------------------------


async def test_on_finalised_runs_on_the_loop_once_the_files_are_durable(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    loop_thread = threading.get_ident()
    seen: list[tuple[Path, bool, dict, int, list[str]]] = []

    def finalised(path: Path) -> None:
        wav = path.with_suffix(".wav")
        seen.append((path, threading.get_ident() == loop_thread, json.loads(path.read_text()),
                     len(read(wav)), list(synced)))

    writer = DiskWriter(tmp_path)
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer, on_finalised=finalised)
    feed(rec, 0, 2)
    rec.close(T0 + 2)
    assert seen == []  # nothing is announced from inside close()
    assert await writer.aclose()
    assert len(seen) == 1
    path, on_loop, data, frames, fsynced = seen[0]
    assert path == rec.json_path and on_loop
    assert data["ended"] is not None and frames == 2 * 8000
    assert {str(rec.wav_path), str(rec.json_path), str(rec.json_path.parent)} <= set(fsynced)


async def test_the_media_core_passes_on_finalised_to_its_recorders(tmp_path: Path) -> None:
    from rtp.call import MediaEndpoint, Party
    from rtp.engine import MediaEngine
    from tests.test_media_core import free_range, phone

    seen: list[Path] = []
    core = MediaEngine("127.0.0.1", free_range(4), tmp_path, on_finalised=seen.append)
    a, b = phone(), phone()
    try:
        call = make_call("core-final")
        call.parties = (Party("external", "carrier"), Party("user", "alice"))
        session = core.open_session(call)
        session.set_media(0, MediaEndpoint(a.getsockname(), "127.0.0.1"))
        session.set_media(1, MediaEndpoint(b.getsockname(), "127.0.0.1"))
        session.answered()
        await asyncio.sleep(0.05)
        session.close()
        await core.close()  # drains the writer: the call is announced before close returns
    finally:
        a.close()
        b.close()
    assert [p.name for p in seen] == ["core-final.json"]
    assert json.loads(seen[0].read_text())["ended"] is not None


# -- full disks, from injected failures ---------------------------------------------------------


class FakeDisk:
    """Makes the writer's file operations fail: `audio` refuses frames (the disk has a few
    blocks left, not enough for audio), `everything` refuses every write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.audio = False
        self.everything = False
        self.refused = 0
        real_write, real_init = WavWriter.write, WavWriter.__init__
        real_sidecar = disk_writer_module.write_sidecar

        def write(wav, frames):
            self._check(self.audio or self.everything)
            real_write(wav, frames)

        def init(wav, *args):
            self._check(self.everything)
            real_init(wav, *args)

        def sidecar(path, data):
            self._check(self.everything)
            real_sidecar(path, data)

        monkeypatch.setattr(WavWriter, "write", write)
        monkeypatch.setattr(WavWriter, "__init__", init)
        monkeypatch.setattr(disk_writer_module, "write_sidecar", sidecar)

    def _check(self, refuse: bool) -> None:
        if refuse:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_call_that_ends_while_the_disk_is_full_gets_ended_then_all_its_audio(tmp_path, monkeypatch, caplog) -> None:
    disk = FakeDisk(monkeypatch)
    done: list[Path] = []
    writer = DiskWriter(tmp_path, retry_seconds=0.01)
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer, on_finalised=done.append)
    feed(rec, 0, 2)
    assert writer.drain(5)
    disk.audio = True
    with caplog.at_level(logging.WARNING):
        feed(rec, 2, 5)
        rec.close(T0 + 5)
        assert wait_for(lambda: ended(rec))
        assert not writer.drain(0.1)  # the audio waits ...
        ended_meta = meta(rec)
        assert ended_meta["ended"] == "2024-05-01T12:00:05.000Z"  # ... but the call is known to have ended
        assert ended_meta["unwritten_s"] == pytest.approx(5 - (2 - 0.2 - 0.02), abs=0.05)
        assert len(read(rec.wav_path)) == round(1.78 * 8000)  # the WAV plays: what was written
        stats = writer.stats()
        assert stats.failing and stats.backlog_seconds == pytest.approx(ended_meta["unwritten_s"], abs=0.01)
        assert stats.write_errors > 0 and done == []
        disk.audio = False  # space returns
        assert writer.close(5)
    assert np.array_equal(read(rec.wav_path), expected(0, 5))
    final = meta(rec)
    assert final["ended"] == ended_meta["ended"] and "unwritten_s" not in final and "silenced_s" not in final
    assert done == [rec.json_path]
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if m.startswith("recording disk1: cannot write")]) == 1
    assert any("event=disk-writable-again" in m for m in lines)


def test_a_call_made_while_the_disk_is_full_never_leaves_a_header_only_wav(tmp_path, monkeypatch) -> None:
    """Nothing can be written: no WAV at all (never a 44-byte one without a sidecar); when
    space returns, the WAV, its audio and the final sidecar, and on_finalised."""
    disk = FakeDisk(monkeypatch)
    disk.everything = True
    done: list[Path] = []
    writer = DiskWriter(tmp_path, retry_seconds=0.01)
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer, on_finalised=done.append)
    feed(rec, 0, 3)
    rec.close(T0 + 3)
    assert not writer.drain(0.2)
    assert not rec.wav_path.exists() and not rec.json_path.exists()
    disk.everything = False
    disk.audio = True  # a few blocks free: the sidecar fits, the audio does not
    writer.retry_now()
    assert wait_for(lambda: ended(rec) and rec.wav_path.exists())
    assert not writer.drain(0.1)
    assert meta(rec)["unwritten_s"] == 3.0
    assert len(read(rec.wav_path)) == 0  # a WAV with its sidecar, never without
    disk.audio = False
    assert writer.close(5)
    assert np.array_equal(read(rec.wav_path), expected(0, 3))
    assert "unwritten_s" not in meta(rec) and done == [rec.json_path]


def test_wav_and_first_sidecar_are_made_together_or_not_at_all(tmp_path, monkeypatch) -> None:
    disk = FakeDisk(monkeypatch)
    real = disk_writer_module.write_sidecar
    fail = {"left": 3}

    def sidecar_fails(path, data):
        if fail["left"]:
            fail["left"] -= 1
            raise ENOSPC
        real(path, data)

    monkeypatch.setattr(disk_writer_module, "write_sidecar", sidecar_fails)
    writer = DiskWriter(tmp_path, retry_seconds=0.01, threaded=False)
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)
    assert fail["left"] < 3 and not rec.wav_path.exists()  # the WAV it made is gone again
    feed(rec, 0, 2)
    rec.close(T0 + 2)
    assert writer.close(1)
    assert np.array_equal(read(rec.wav_path), expected(0, 2)) and meta(rec)["ended"] is not None
    assert disk.refused == 0


def test_the_backlog_bound_drops_the_oldest_as_silence_with_one_line(tmp_path, monkeypatch, caplog) -> None:
    disk = FakeDisk(monkeypatch)
    writer = DiskWriter(tmp_path, retry_seconds=0.01, max_backlog_bytes=3 * 8000 * 4)  # 3 s of one call
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)
    feed(rec, 0, 1)
    assert writer.drain(5)
    disk.audio = True
    with caplog.at_level(logging.WARNING):
        for second in range(1, 9):
            feed(rec, second, second + 1)
            writer.drain(0.03)
        assert wait_for(lambda: writer.stats().dropped_seconds > 4.9)  # the writer took it all in
        stats = writer.stats()
        assert stats.backlog_bytes <= 3 * 8000 * 4 and stats.dropped_seconds == pytest.approx(5.0, abs=0.05)
        disk.audio = False
        assert writer.drain(5)
        rec.close(T0 + 9)
        assert writer.close(5)
    drops = [r for r in caplog.records if "event=backlog-full" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.ERROR
    assert any("event=disk-writable-again dropped_s=5.0" in r.getMessage() for r in caplog.records)
    data = read(rec.wav_path)
    assert len(data) == 9 * 8000  # aligned: the dropped span is silence of its length
    assert meta(rec)["silenced_s"] == pytest.approx(5.0, abs=0.05)
    assert np.array_equal(data[-round(3.2 * 8000):], expected(0, 9)[-round(3.2 * 8000):])


def test_a_refused_existing_file_is_never_overwritten_and_its_commands_are_dropped(tmp_path) -> None:
    writer = DiskWriter(tmp_path)
    first = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)
    feed(first, 0, 1)
    first.close(T0 + 1)
    assert writer.drain(5)
    before = first.wav_path.read_bytes(), first.json_path.read_bytes()
    again = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)
    feed(again, 0, 2)
    again.close(T0 + 2)
    assert writer.close(5)
    assert (first.wav_path.read_bytes(), first.json_path.read_bytes()) == before
    assert writer.stats().queue_depth == 0


# -- the reserve ---------------------------------------------------------------------------------


def test_the_reserve_is_made_at_start_released_on_enospc_and_made_again(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(disk_writer_module, "REPORT_SECONDS", 0.0)
    monkeypatch.setattr(disk_writer_module, "_IDLE_SECONDS", 0.02)
    disk = FakeDisk(monkeypatch)
    writer = DiskWriter(tmp_path, retry_seconds=0.01, reserve_bytes=64 * 1024)
    writer.start()
    reserve = reserve_path(tmp_path)
    assert wait_for(lambda: writer.stats().reserve_held)
    assert reserve.stat().st_blocks * 512 >= 64 * 1024  # real blocks, not a hole
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)
    disk.audio = True
    with caplog.at_level(logging.WARNING):
        feed(rec, 0, 2)
        assert wait_for(lambda: not reserve.exists())
        # the writer thread logs just after it removes the file: wait for the line too
        assert wait_for(lambda: any("event=disk-full-reserve-released bytes=65536" in r.getMessage()
                                    for r in caplog.records))
    disk.audio = False
    rec.close(T0 + 2)
    assert writer.drain(5)
    assert wait_for(lambda: writer.stats().reserve_held and reserve.exists())
    assert writer.close(5)


def wait_for(condition, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


# -- a real full disk: a 2 MB tmpfs -----------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 2 MB tmpfs (the size of issue 16's test); unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:  # not root: the same logic is covered above with injected failures
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte (the writer's reserve aside)."""
    filler = directory / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as f:
        block = b"\x55" * 65536
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):
            try:
                while f.write(b"\x55" * size):
                    pass
            except OSError:
                pass
    return filler


def test_a_real_full_disk_loses_nothing_and_finishes_every_sidecar(tiny_disk: Path, caplog) -> None:
    """Issue 16, finding 5, on a real 2 MB filesystem: a call that ends while the disk is full
    gets `ended`, a call made while full leaves no header-only WAV without a sidecar, and when
    space returns every second of both is written and both are announced."""
    done: list[Path] = []
    writer = DiskWriter(tiny_disk, retry_seconds=0.05)
    writer.start()
    assert wait_for(lambda: writer.stats().reserve_held)
    before = Recorder(tiny_disk, make_call("before-full"), "silence", T0, wall_t0=WALL_T0, writer=writer,
                      on_finalised=done.append)
    feed(before, 0, 1)
    assert writer.drain(5)
    with caplog.at_level(logging.WARNING):
        filler = fill(tiny_disk)
        feed(before, 1, 4)  # refused: the reserve is released for ended recordings
        assert wait_for(lambda: not reserve_path(tiny_disk).exists())
        during = Recorder(tiny_disk, make_call("while-full"), "silence", T0 + 2, wall_t0=WALL_T0, writer=writer,
                          on_finalised=done.append)
        feed(during, 2, 4)
        before.close(T0 + 4)
        during.close(T0 + 4)
        assert wait_for(lambda: ended(before) and ended(during) and during.wav_path.exists())
        assert not writer.drain(0.2)
        for rec in (before, during):  # ended is set for both, and each WAV has its sidecar
            assert meta(rec)["ended"] is not None and meta(rec)["unwritten_s"] > 0
            assert rec.wav_path.exists()
        assert not writer.drain(0.3) and done == []
        assert writer.stats().backlog_seconds > 3
        filler.unlink()  # space returns
        assert writer.close(5)
    assert np.array_equal(read(before.wav_path), expected(0, 4))
    assert np.array_equal(read(during.wav_path), expected(2, 4)[: 2 * 8000])
    for rec in (before, during):
        assert meta(rec)["ended"] is not None and "unwritten_s" not in meta(rec)
    assert sorted(p.name for p in done) == ["before-full.json", "while-full.json"]
    assert any("No space left on device" in r.getMessage() for r in caplog.records)
    assert not [p for p in tiny_disk.rglob("*.wav") if not p.with_suffix(".json").exists()]
    shutil.rmtree(tiny_disk / "2024")


def test_metrics_read_the_writers_backlog_drops_and_errors(tmp_path, monkeypatch) -> None:
    """What /metrics shows while the disk refuses writes (b2bua.recordings_service.metrics)."""
    from types import SimpleNamespace

    from b2bua.recordings_service.metrics import B2buaCollector, ServiceCounters

    disk = FakeDisk(monkeypatch)
    writer = DiskWriter(tmp_path, retry_seconds=0.01, max_backlog_bytes=2 * 8000 * 4)
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=writer)
    disk.audio = True
    for second in range(4):
        feed(rec, second, second + 1)
        writer.drain(0.03)
    assert wait_for(lambda: writer.stats().dropped_seconds > 1.7)
    media = SimpleNamespace(sessions=[], writer=writer, admission=None, lag=0.0, overloaded=False, stats=lambda: {})
    server = SimpleNamespace(media=media, core=SimpleNamespace(calls={}, counts={}), lockout=None)
    metrics = {m.name: m.samples[0].value for m in B2buaCollector(server, ServiceCounters(), tmp_path).collect()
               if m.name.startswith("b2bua_recorder_")}
    assert metrics["b2bua_recorder_backlog_seconds"] == pytest.approx(2.0, abs=0.05)
    assert metrics["b2bua_recorder_dropped_seconds"] == pytest.approx(1.78, abs=0.05)
    assert metrics["b2bua_recorder_write_errors"] > 0
    disk.audio = False
    rec.close(T0 + 4)
    assert writer.close(5)


def test_a_reserve_another_worker_released_is_made_again(tmp_path, monkeypatch) -> None:
    """Cluster workers share the recordings directory: the reserve one of them released
    does not stay counted as held by the others."""
    monkeypatch.setattr(disk_writer_module, "REPORT_SECONDS", 0.0)
    monkeypatch.setattr(disk_writer_module, "_IDLE_SECONDS", 0.02)
    disk = FakeDisk(monkeypatch)
    ours, theirs = (DiskWriter(tmp_path, retry_seconds=0.01, reserve_bytes=16384) for _ in range(2))
    ours.start()
    theirs.start()
    assert wait_for(lambda: ours.stats().reserve_held and theirs.stats().reserve_held)
    reserve_path(tmp_path).unlink()  # the other worker hit the full disk first
    rec = Recorder(tmp_path, make_call(), "silence", T0, wall_t0=WALL_T0, writer=ours)
    disk.audio = True
    feed(rec, 0, 2)
    assert wait_for(lambda: not ours.stats().reserve_held)
    disk.audio = False
    rec.close(T0 + 2)
    assert ours.drain(5)
    assert wait_for(lambda: ours.stats().reserve_held and reserve_path(tmp_path).exists())
    assert ours.close(5) and theirs.close(5)


def test_the_reserve_stays_out_of_the_recordings_tree_unless_that_tree_is_a_filesystem_of_its_own(tmp_path) -> None:
    """The tree holds recordings only (a call never recorded leaves no file); a mount point
    of its own must hold its reserve itself, since only room on that filesystem helps."""
    recordings = tmp_path / "recordings"
    writer = DiskWriter(recordings, reserve_bytes=16384)
    writer.start()
    try:
        assert wait_for(lambda: writer.stats().reserve_held)
        assert [p for p in recordings.rglob("*")] == []
        assert reserve_path(recordings) == tmp_path / f".recordings{RESERVE_NAME}"
        assert reserve_path(recordings).exists()
    finally:
        assert writer.close(5)
    assert reserve_path(Path("/proc")) == Path("/proc") / RESERVE_NAME  # its own filesystem
