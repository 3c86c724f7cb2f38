"""The recorder's disk side: a thread that performs recordings' write commands.

Why a thread: recorders (rtp.recorder) run on the event loop beside every call's media, and a
write that blocks (a slow or full disk, a directory created, the fsync when a call ends) would
hold up every call's packets. A recorder only turns audio into commands on its
`RecordingFiles` handle (`open`, `write`, `silence`, `sidecar`, `finish`): each costs the loop
an object and a deque append. The thread performs them in order per file: the WAV created with
its sidecar, frames appended with `pwrite` at the file's end and the header patched after each
(rtp.wavfile: a kill -9 leaves a playable file of everything written), the sidecar replaced
atomically, and at the end the final sidecar. A second thread then makes the finished
recording durable (fsync of the WAV, the sidecar and their directory; one `sync()` for a
batch, as at shutdown) and posts `on_finalised(sidecar_path)` to the recording's event loop.

Why one writer thread and not a pool: appends land in the page cache (a memcpy), so under the
GIL more threads add switching, not throughput, and a disk that hangs stalls every file either
way; only the fsyncs, which wait on the device, have a thread of their own. When the writer
falls behind, what waited for one file goes out in one `pwritev` and one header patch, so it
catches up in fewer system calls. It gets the GIL while the loop waits for packets; a loop
that never waits (a saturated core) starves it, and audio then waits in memory (bounded).

A full disk (ENOSPC; EDQUOT, EIO and any other OSError alike): the command that failed stays
first in its file's queue and everything behind it waits in memory, retried every
`retry_seconds`. What waits is bounded for all recordings together (`max_backlog_bytes`): past
it, the oldest waiting audio becomes silence of the same length (a hole in the file, which
needs no disk space), so the timeline never shifts; one log line says so, and one more how
much was dropped when writing works again. The first failure releases a reserve file
(`reserve_path`, made at start) so recordings whose call has
ended can be finalised: those go first at every retry, and one whose audio still cannot be
written gets its sidecar with `ended` set (and `unwritten_s`) as soon as that fits; the audio
follows when space returns and the sidecar is written again. Live recordings are tried again
only once the disk has twice the reserve free, so their audio never eats that room. A new recording's WAV is created
together with its sidecar or not at all, so a full disk never leaves a header-only WAV
nobody can find. `stats()` says how much audio is waiting (for /metrics and the log line
written every `REPORT_SECONDS` while the disk refuses).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rtp.sidecar import write_sidecar
from rtp.wavfile import SAMPLE_WIDTH, WavWriter

#: The reserve file, released when the disk fills (where it lives: `reserve_path`).
RESERVE_NAME = ".disk-reserve"
#: Its size: a sidecar (a page or two) for each of a few thousand recordings ending while full;
#: never more than 1/32 of the filesystem (nor less than a page), so small disks stay usable.
RESERVE_BYTES = 8 << 20
#: Audio held in memory while the disk refuses writes, all recordings together: 256 MiB is
#: ~2,000 calls' 4 s at 8 kHz stereo, or one call's 2 h 15 min.
MAX_BACKLOG_BYTES = 256 << 20
#: A disk that takes writes but is behind (a burst, a slow device) may hold this many times
#: the bound before audio is dropped: the bound is for a disk that refuses.
HEALTHY_BOUND_FACTOR = 4
RETRY_SECONDS = 1.0  # how often a refusing disk is tried again
REPORT_SECONDS = 10.0  # while it refuses: one line this often says how much audio waits
STUCK_SECONDS = 10.0  # a writer silent this long with audio waiting is stuck in a system call
SHUTDOWN_SECONDS = 5.0  # how long shutdown waits for the writer (issue 5: all within 5 s)
SYNC_ALL_AT = 32  # this many recordings finished at once (a shutdown) are made durable by one sync()
_IDLE_SECONDS = 5.0  # an idle writer wakes this often for its chores (the reserve)
_FULL = (errno.ENOSPC, errno.EDQUOT)

_OPEN, _AUDIO, _SIDECAR, _FINISH = range(4)
_default_log = logging.getLogger(__name__)


class WriterStats(NamedTuple):
    """What the writer holds and has lost (cheap to read from the loop, for /metrics)."""

    queue_depth: int  # commands submitted and not yet performed
    backlog_bytes: int  # audio waiting in memory to be written
    backlog_seconds: float  # the same, in seconds of recording
    dropped_seconds: float  # audio turned to silence because the backlog was full
    write_errors: int  # failed write attempts (each retry counts)
    failing: bool  # the disk refuses writes now
    reserve_held: bool  # the reserve file is in place
    recordings: int  # recordings with commands waiting


class _Chunk:
    """Frames for one file (`data` None: silence of `frames` frames)."""

    __slots__ = ("data", "frames", "us", "done")

    def __init__(self, data: np.ndarray | None, frames: int, us: int) -> None:
        self.data = data
        self.frames = frames
        self.us = us  # microseconds of audio `data` holds (0 for silence): exact counters
        self.done = False


class RecordingFiles:
    """One recording's WAV and sidecar, as the recorder sees them: commands, no I/O.

    Called on the event loop's thread; everything else here belongs to the writer thread."""

    __slots__ = ("writer", "wav_path", "json_path", "sample_rate", "channels", "call_id", "on_finalised",
                 "loop", "pending", "wav", "refused", "closing", "ended_ahead", "finished", "error_logged",
                 "silenced_frames", "waiting_frames", "sidecars", "__weakref__")

    def __init__(self, writer: DiskWriter, wav_path: Path, json_path: Path, sample_rate: int, channels: int,
                 call_id: str, on_finalised: Callable[[Path], None] | None) -> None:
        self.writer = writer
        self.wav_path = wav_path
        self.json_path = json_path
        self.sample_rate = sample_rate
        self.channels = channels
        self.call_id = call_id
        self.on_finalised = on_finalised
        self.loop: asyncio.AbstractEventLoop | None = None
        if on_finalised is not None:
            try:
                self.loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop (a tool, a test): the owner's drain() calls it
        # The writer thread's:
        self.pending: deque[tuple[int, Any]] = deque()
        self.wav: WavWriter | None = None
        self.refused = False  # the WAV already existed: never overwritten, nothing written
        self.closing = False  # finish() is queued
        self.ended_ahead = False  # a final sidecar went ahead of audio the disk refused
        self.finished = False
        self.error_logged = False  # a write failed: logged once per recording
        self.silenced_frames = 0  # audio dropped as silence past the backlog bound
        self.waiting_frames = 0  # audio frames queued, not yet written
        self.sidecars = 0  # sidecar commands queued (only the last one is written)

    # -- the recorder's side (event loop) -----------------------------------------------

    def open(self, sidecar: dict[str, Any]) -> None:
        """Create the WAV (never over an existing one) and its first sidecar."""
        self.writer._submit(self, _OPEN, sidecar)

    def write(self, frames: np.ndarray) -> None:
        """Append interleaved int16 frames; the array is the writer's from now on."""
        n = frames.shape[0]
        if n:
            self.writer._submit_audio(self, frames, n)

    def silence(self, frames: int) -> None:
        """Append `frames` of silence (a paused span)."""
        if frames > 0:
            self.writer._submit(self, _AUDIO, _Chunk(None, frames, 0))

    def sidecar(self, data: dict[str, Any]) -> None:
        """Replace the sidecar (a pause, a resume); the dict is the writer's from now on."""
        self.writer._submit(self, _SIDECAR, data)

    def finish(self, data: dict[str, Any]) -> None:
        """The last command: the final sidecar (`ended` set), then durable, then on_finalised."""
        self.writer._submit(self, _FINISH, data)


def reserve_path(directory: Path) -> Path:
    """Where the reserve for `directory` lives: it must be on the recordings' filesystem to
    free room there, and it stays out of the recordings tree wherever it can, so the tree
    holds recordings only (contract: a call never recorded leaves no file at all). Beside
    the tree when its parent is on the same filesystem; inside it, hidden, only when the
    recordings directory is a filesystem of its own (a mount point)."""
    try:
        own_filesystem = os.stat(directory).st_dev != os.stat(directory.parent).st_dev
    except OSError:
        own_filesystem = False
    if own_filesystem:
        return directory / RESERVE_NAME
    return directory.parent / f".{directory.name}{RESERVE_NAME}"


class DiskWriter:
    """Performs every recording's commands on one thread (`threaded=False`: on the caller's,
    at once: for tools and tests that want files as they go).

    `directory` is the recordings directory, where the reserve file lives (None: no reserve).
    The thread starts with the first command; `close()` (or `await aclose()`) drains it."""

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        threaded: bool = True,
        log: logging.Logger | None = None,
        max_backlog_bytes: int = MAX_BACKLOG_BYTES,
        reserve_bytes: int | None = None,
        retry_seconds: float | None = None,
        durable: bool = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.threaded = threaded
        self.log = log if log is not None else _default_log
        self.max_backlog_bytes = max_backlog_bytes
        self._reserve_bytes = reserve_bytes  # None: RESERVE_BYTES, within the filesystem's 1/32
        self.retry_seconds = retry_seconds if retry_seconds is not None else (RETRY_SECONDS if threaded else 0.0)
        self.durable = durable
        self._incoming: deque[tuple[RecordingFiles, int, Any]] = deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()  # starting the thread
        self._beat = 0.0  # when the writer thread last came round its loop (monotonic)
        # Counters written by the submitting thread only ...
        self._submitted_ops = 0
        self._submitted_bytes = 0
        self._submitted_us = 0
        self._dropped_at_submit_us = 0
        # ... and by the writer thread only: the difference is what waits.
        self._done_ops = 0
        self._done_bytes = 0
        self._done_us = 0
        self._dropped_us = 0
        self.write_errors = 0
        # The writer thread's state.
        self._ready: dict[RecordingFiles, None] = {}  # files with commands, in arrival order
        self._held: deque[tuple[RecordingFiles, _Chunk]] = deque()  # audio waiting, oldest first
        self._failing = False
        self._next_retry = 0.0
        self._next_report = 0.0
        self._outage_dropped_us = 0
        self._outage_dropped_logged = False
        self._reserve_held = False
        self._reserve_tried = False
        self._next_reserve_check = 0.0
        self._completed: deque[tuple[Callable[[Path], None], Path]] = deque()
        # The sync thread: finished recordings made durable, then announced (on_finalised).
        self._syncs: queue.SimpleQueue[RecordingFiles | None] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None
        self._synced_ops = 0  # FINISH commands are counted here, not in _done_ops

    # -- the event loop's side ------------------------------------------------------------

    def recording(self, wav_path: Path, json_path: Path, sample_rate: int, channels: int, call_id: str,
                  on_finalised: Callable[[Path], None] | None = None) -> RecordingFiles:
        """A handle for one recording's files (nothing happens on disk until `open`)."""
        return RecordingFiles(self, wav_path, json_path, sample_rate, channels, call_id, on_finalised)

    def _submit(self, files: RecordingFiles, op: int, arg: Any) -> None:
        self._incoming.append((files, op, arg))
        self._submitted_ops += 1
        if self._sleeping:
            self._wake.set()
        elif self._thread is None:
            self._first_command()

    def _submit_audio(self, files: RecordingFiles, frames: np.ndarray, n: int) -> None:
        size = frames.nbytes
        us = n * 1_000_000 // files.sample_rate
        if self._submitted_bytes - self._done_bytes + size > self.max_backlog_bytes and self._stuck():
            # The writer thread keeps the backlog within the bound by dropping the oldest; when
            # it is stuck in a system call (a hung disk), only the newest can be dropped here.
            if not self._dropped_at_submit_us:
                self.log.error("recordings event=writer-stuck backlog_bytes=%d: dropping new audio as silence "
                               "until the disk answers", self._submitted_bytes - self._done_bytes)
            self._dropped_at_submit_us += us
            self._submit(files, _AUDIO, _Chunk(None, n, 0))
            return
        self._submitted_bytes += size
        self._submitted_us += us
        self._submit(files, _AUDIO, _Chunk(frames, n, us))

    def start(self) -> None:
        """Start the thread now (it makes the reserve file first) rather than at the first
        command: the server does, so the reserve is in place before the disk can fill."""
        if self.threaded and self._thread is None:
            self._first_command()

    def _stuck(self) -> bool:
        return self.threaded and self._thread is not None and time.monotonic() - self._beat > STUCK_SECONDS

    def _first_command(self) -> None:
        if not self.threaded:
            self._pump()
            return
        with self._lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="recordings-writer", daemon=True)
                self._thread.start()

    def stats(self) -> WriterStats:
        """Cheap counters, safe to read from any thread (each a plain read)."""
        backlog_us = self._submitted_us - self._done_us
        return WriterStats(
            queue_depth=self._submitted_ops - self._performed(),
            backlog_bytes=self._submitted_bytes - self._done_bytes,
            backlog_seconds=backlog_us / 1e6,
            dropped_seconds=(self._dropped_us + self._dropped_at_submit_us) / 1e6,
            write_errors=self.write_errors,
            failing=self._failing,
            reserve_held=self._reserve_held,
            recordings=len(self._ready),
        )

    def _performed(self) -> int:
        return self._done_ops + self._synced_ops

    def idle(self) -> bool:
        """Every command submitted so far has been performed (or given up)."""
        return self._performed() >= self._submitted_ops

    def drain(self, timeout: float | None = None) -> bool:
        """Block until every command submitted so far is performed; False at `timeout`.

        Not for the event loop (see `aclose`). Also runs the `on_finalised` calls of
        recordings made without a running loop, on this thread."""
        target = self._submitted_ops
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.threaded:
            while True:
                self._pump(force=True)
                if self._performed() >= target or (deadline is not None and time.monotonic() >= deadline):
                    break
                time.sleep(max(self.retry_seconds, 0.001))
        else:
            while self._performed() < target:
                if self._thread is None:
                    self._first_command()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._wake.set()
                time.sleep(0.002)
        self._run_completed()
        return self._performed() >= target

    def retry_now(self) -> None:
        """Try a refusing disk again now rather than at the next retry (tests, an operator)."""
        self._next_retry = 0.0
        if not self.threaded:
            self._pump(force=True)
        self._wake.set()

    def close(self, timeout: float | None = SHUTDOWN_SECONDS) -> bool:
        """Drain (up to `timeout`), then stop the thread; True if nothing was left unwritten."""
        drained = self.drain(timeout)
        self._stop(drained)
        return drained

    async def aclose(self, timeout: float = SHUTDOWN_SECONDS) -> bool:
        """`close` for the event loop: waits without blocking it, so the `on_finalised`
        calls the writer posts to the loop run before it returns."""
        deadline = time.monotonic() + timeout
        target = self._submitted_ops
        if self._thread is None and target > self._performed():
            self._first_command()
        while self._performed() < target and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # on_finalised calls posted by the last commands
        drained = self._performed() >= target
        self._run_completed()
        self._stop(drained)
        return drained

    def _stop(self, drained: bool) -> None:
        if not drained:
            s = self.stats()
            self.log.error("recordings event=shutdown-unfinished commands=%d waiting_s=%.1f waiting_bytes=%d "
                           "recordings=%d: the disk did not take them in time", s.queue_depth, s.backlog_seconds,
                           s.backlog_bytes, s.recordings)
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        self._thread = None
        if self._syncer is not None:
            self._syncs.put(None)
            self._syncer.join(1.0)
            self._syncer = None

    def _run_completed(self) -> None:
        while self._completed:
            callback, path = self._completed.popleft()
            try:
                callback(path)
            except Exception:
                self.log.exception("on_finalised failed for %s", path)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        self._make_reserve()
        while not self._stopping:
            self._beat = time.monotonic()
            try:
                self._pump()
            except Exception:  # a bug must not silently end every recording's writes
                self.log.exception("recordings event=writer-error")
            if self._ready and self._failing:
                self._wake.wait(max(0.0, min(self._next_retry - time.monotonic(), RETRY_SECONDS)))
                self._wake.clear()
                continue
            self._sleeping = True
            if not self._incoming:
                self._wake.wait(_IDLE_SECONDS)
            self._sleeping = False
            self._wake.clear()
            self._chores()

    def _pump(self, force: bool = False) -> None:
        """Take what was submitted; perform it unless the disk refuses and it is not yet
        time to try again."""
        self._take()
        if not self._ready:
            return
        now = time.monotonic()
        if self._failing and now < self._next_retry and not force:
            self._report(now)
            return
        self._round(now)
        self._report(now)
        held = self._held
        while held and held[0][1].done:  # let go of finished recordings (no cycles through us)
            held.popleft()

    def _take(self) -> None:
        incoming = self._incoming
        ready = self._ready
        held = self._held
        while incoming:
            files, op, arg = incoming.popleft()
            if files.refused or files.finished:
                self._discard(op, arg)
                continue
            files.pending.append((op, arg))
            if op == _AUDIO:
                if arg.data is not None:
                    held.append((files, arg))
                    files.waiting_frames += arg.frames
            elif op == _SIDECAR:
                files.sidecars += 1
            elif op == _FINISH:
                files.closing = True
                files.sidecars += 1
            ready[files] = None
        while held and held[0][1].done:
            held.popleft()
        bound = self.max_backlog_bytes if self._failing else HEALTHY_BOUND_FACTOR * self.max_backlog_bytes
        if self._submitted_bytes - self._done_bytes > bound:
            self._drop_oldest(bound)

    def _discard(self, op: int, arg: Any) -> None:
        """A command that will never be performed (refused file): it counts as done."""
        if op == _AUDIO and not arg.done:
            self._done_bytes += arg.data.nbytes if arg.data is not None else 0
            self._done_us += arg.us
            arg.done = True
        self._done_ops += 1

    def _drop_oldest(self, bound: int) -> None:
        """Turn the oldest waiting audio into silence until the backlog is within `bound`."""
        held = self._held
        over = self._submitted_bytes - self._done_bytes - bound
        dropped_us = 0
        while over > 0 and held:
            files, chunk = held.popleft()
            if chunk.done or chunk.data is None:
                continue
            size = chunk.data.nbytes
            chunk.data = None
            self._done_bytes += size
            self._done_us += chunk.us
            dropped_us += chunk.us
            chunk.us = 0
            files.silenced_frames += chunk.frames
            files.waiting_frames -= chunk.frames
            over -= size
        self._dropped_us += dropped_us
        self._outage_dropped_us += dropped_us
        if dropped_us and not self._outage_dropped_logged:
            self._outage_dropped_logged = True
            self.log.error(
                "recordings event=backlog-full bound_bytes=%d: the disk has refused writes too long; "
                "the oldest waiting audio is kept as silence from now on (how much: at recovery, and in "
                "each recording's sidecar as silenced_s)", self.max_backlog_bytes)

    def _round(self, now: float) -> None:
        """Perform every file's commands, in arrival order, until the disk refuses one."""
        if self._failing:
            self._retry(now)
            return
        for files in list(self._ready):
            self._beat = time.monotonic()  # a long round (a burst of new files) is not a stuck writer
            if not self._attempt(files, now):
                self._retry(now)  # at once: the reserve's room is for ended recordings
                return

    def _attempt(self, files: RecordingFiles, now: float) -> bool:
        """Run `files`' commands; False if the disk refused one (noted, the reserve released)."""
        try:
            self._run_files(files)
        except OSError as exc:
            self.write_errors += 1
            self._note_failure(files, exc, now)
            self._release_reserve(exc)
            return False
        if not files.pending:
            self._ready.pop(files, None)
        return True

    def _retry(self, now: float) -> None:
        """The disk refused a write. Ended recordings first: each gets its final sidecar
        (`ended` set) ahead of the audio it still waits to write, then its audio is tried.
        Live recordings are tried only once there is more room than the reserve held, so
        their audio never eats the room the next ended recordings need."""
        ready = self._ready
        closing = [files for files in ready if files.closing]
        for files in closing:
            if not files.ended_ahead and len(files.pending) > 1:
                self._end_ahead(files)
        failed = False
        for files in closing:
            failed = not self._attempt(files, now) or failed  # each ended recording may still fit
        live = [files for files in ready if not files.closing]
        if live and not self._room():
            failed = True
        elif live:
            for files in live:
                if not self._attempt(files, now):
                    failed = True
                    break  # a live recording's audio refused: the disk refuses everyone's
        if failed:
            self._next_retry = now + self.retry_seconds
        elif self._failing:
            self._recovered()

    def _room(self) -> bool:
        """More free space than twice the reserve: live recordings may write again."""
        if self.directory is None or self._reserve_bytes == 0:
            return True
        try:
            st = os.statvfs(self.directory)
            return st.f_bavail * st.f_frsize >= 2 * self._reserve_size()
        except OSError:
            return True  # no answer: let a write attempt tell

    def _run_files(self, files: RecordingFiles) -> None:
        """Perform `files`' commands in order; a command leaves the queue only once done.
        An OSError leaves it first in the queue (retried); anything else is a bug, logged,
        and that command is given up so the file's other commands still go out."""
        pending = files.pending
        while pending:
            op, arg = pending[0]
            try:
                if op == _AUDIO:
                    self._write_audio(files)
                    continue
                if op == _OPEN:
                    self._open(files, arg)
                    if files.refused:
                        return
                elif op == _SIDECAR:
                    if files.sidecars == 1:  # a later one supersedes it
                        write_sidecar(files.json_path, self._with_counts(files, arg))
                    files.sidecars -= 1
                else:
                    self._finish(files, arg)
                    files.sidecars -= 1
                    pending.popleft()
                    continue  # counted by _durable, when it is on the disk
            except OSError:
                raise
            except Exception:
                self.log.exception("recording %s: the writer gives up a command it cannot perform", files.call_id)
                pending.popleft()
                self._discard(op, arg)
                continue
            pending.popleft()
            self._done_ops += 1

    def _write_audio(self, files: RecordingFiles) -> None:
        """The audio at the head of the queue: a silence, or every data chunk in a row (one
        pwritev, one header patch)."""
        pending = files.pending
        wav = files.wav
        assert wav is not None
        first = pending[0][1]
        if first.data is None:
            wav.extend(first.frames)
            first.done = True
            pending.popleft()
            self._done_ops += 1
            return
        chunks = []
        for op, arg in pending:
            if op != _AUDIO or arg.data is None:
                break
            chunks.append(arg)
        wav.write([c.data for c in chunks] if len(chunks) > 1 else first.data)
        for chunk in chunks:
            pending.popleft()
            chunk.done = True
            self._done_bytes += chunk.data.nbytes
            self._done_us += chunk.us
            files.waiting_frames -= chunk.frames
            chunk.data = None
        self._done_ops += len(chunks)

    def _open(self, files: RecordingFiles, sidecar: dict[str, Any]) -> None:
        """The WAV and its first sidecar, both or neither."""
        files.wav_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            wav = WavWriter(files.wav_path, files.sample_rate, files.channels)
        except FileExistsError:
            self.log.error("recording %s: %s already exists; not overwriting, call not recorded",
                           files.call_id, files.wav_path)
            files.refused = True
            pending = files.pending
            while pending:
                op, arg = pending.popleft()
                self._discard(op, arg)
            self._ready.pop(files, None)
            return
        if files.ended_ahead:  # its call ended while the disk refused: keep `ended` set
            sidecar = self._with_counts(files, files.pending[-1][1], unwritten=True)
        else:
            sidecar = self._with_counts(files, sidecar)
        try:
            write_sidecar(files.json_path, sidecar)
        except OSError:
            wav.close()
            try:
                files.wav_path.unlink()
            except OSError:
                pass
            raise
        files.wav = wav

    def _finish(self, files: RecordingFiles, sidecar: dict[str, Any]) -> None:
        """Close the WAV, write the final sidecar; durability and on_finalised follow on the
        sync thread, so an fsync (milliseconds to a busy disk) never holds up other files."""
        wav = files.wav
        if wav is not None:
            wav.close()
            files.wav = None
        write_sidecar(files.json_path, self._with_counts(files, sidecar))
        files.finished = True
        self.log.info("call=%s event=recording-finalised path=%s segments=%d", files.call_id, files.wav_path,
                      len(sidecar.get("segments") or ()))
        if files.ended_ahead:
            self.log.warning("recording %s: all its audio written after the disk refused it; finalised %s",
                             files.call_id, files.wav_path)
        if self.threaded:
            self._syncs.put(files)
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._run_syncs, name="recordings-sync", daemon=True)
                self._syncer.start()
        else:
            self._durable(files)

    def _run_syncs(self) -> None:
        syncs = self._syncs
        while True:
            batch = [syncs.get()]
            while len(batch) < 4096:  # what else has finished meanwhile (shutdown: every call)
                try:
                    batch.append(syncs.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            batch = [files for files in batch if files is not None]
            if len(batch) >= SYNC_ALL_AT and self.durable:
                os.sync()  # one flush of everything beats three fsyncs for each of many files
                for files in batch:
                    self._durable(files, synced=True)
            else:
                for files in batch:
                    self._durable(files)
            if stop:
                return

    def _durable(self, files: RecordingFiles, synced: bool = False) -> None:
        """fsync the WAV, the sidecar and their directory; then on_finalised."""
        if self.durable and not synced:
            try:
                for path, flags in ((files.wav_path, os.O_RDONLY), (files.json_path, os.O_RDONLY),
                                    (files.json_path.parent, os.O_RDONLY | os.O_DIRECTORY)):
                    fd = os.open(path, flags)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except OSError as exc:  # the files are final; that they reached the disk is not known
                self.log.error("recording %s: cannot make %s durable: %s", files.call_id, files.wav_path, exc)
        self._deliver(files)
        self._synced_ops += 1

    def _with_counts(self, files: RecordingFiles, data: dict[str, Any], unwritten: bool = False) -> dict[str, Any]:
        """The recorder's sidecar plus what only the writer knows: audio lost to the bound."""
        if not files.silenced_frames and not unwritten:
            return data
        data = dict(data)
        if files.silenced_frames:
            data["silenced_s"] = files.silenced_frames / files.sample_rate
        if unwritten:
            data["unwritten_s"] = files.waiting_frames / files.sample_rate
        return data

    def _end_ahead(self, files: RecordingFiles) -> None:
        """An ended recording whose audio the disk refuses: its final sidecar goes ahead, with
        `unwritten_s`, so `ended` is set whatever happens next; the audio and the sidecar
        without it follow when space returns."""
        if files.ended_ahead:
            return
        op, data = files.pending[-1]
        if op != _FINISH or (files.pending[0][0] == _OPEN and files.wav_path.exists()):
            return  # (a WAV already there is another recording's: its sidecar is not ours either)
        try:
            write_sidecar(files.json_path, self._with_counts(files, data, unwritten=True))
        except OSError:
            self.write_errors += 1
            return
        files.ended_ahead = True
        self.log.warning("recording %s: ended while the disk refuses writes; sidecar written with %.1f s of "
                         "audio still waiting", files.call_id, files.waiting_frames / files.sample_rate)

    def _deliver(self, files: RecordingFiles) -> None:
        callback = files.on_finalised
        if callback is None:
            return
        if files.loop is None:
            self._completed.append((callback, files.json_path))
            if not self.threaded:
                self._run_completed()
            return
        try:
            files.loop.call_soon_threadsafe(callback, files.json_path)
        except RuntimeError:  # the loop has closed: nobody is left to tell
            self.log.warning("recording %s: finalised after its event loop closed; on_finalised not called",
                             files.call_id)

    def _note_failure(self, files: RecordingFiles, exc: OSError, now: float) -> None:
        if not self._failing:
            self._failing = True
            self._next_report = now + REPORT_SECONDS
            self._outage_dropped_us = 0
            self._outage_dropped_logged = False
        self._next_retry = now + self.retry_seconds
        if not files.error_logged:  # one line per recording, whatever the outage's length
            files.error_logged = True
            self.log.error("recording %s: cannot write %s: %s; holding its audio in memory (up to %.1f MB for all "
                           "recordings) and retrying every %g s", files.call_id, files.wav_path.parent, exc,
                           self.max_backlog_bytes / 1e6, self.retry_seconds)

    def _recovered(self) -> None:
        self._failing = False
        self._next_retry = 0.0
        self.log.warning("recordings event=disk-writable-again dropped_s=%.1f: waiting audio written",
                         self._outage_dropped_us / 1e6)
        self._outage_dropped_us = 0
        self._outage_dropped_logged = False

    def _report(self, now: float) -> None:
        if not self._failing or now < self._next_report:
            return
        self._next_report = now + REPORT_SECONDS
        s = self.stats()
        self.log.warning("recordings event=disk-refusing waiting_s=%.1f waiting_bytes=%d recordings=%d dropped_s=%.1f",
                         s.backlog_seconds, s.backlog_bytes, s.recordings, s.dropped_seconds)

    # -- the reserve ------------------------------------------------------------------------

    def _reserve_path(self) -> Path | None:
        return reserve_path(self.directory) if self.directory is not None else None

    def _reserve_size(self) -> int:
        if self._reserve_bytes is not None:
            return self._reserve_bytes
        assert self.directory is not None
        st = os.statvfs(self.directory)
        return max(4096, min(RESERVE_BYTES, st.f_blocks * st.f_frsize // 32))

    def _make_reserve(self) -> None:
        path = self._reserve_path()
        if path is None or self._reserve_held or self._reserve_bytes == 0:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            size = self._reserve_size()
            if path.exists() and path.stat().st_blocks * 512 >= size:
                self._reserve_held = True
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)  # real blocks: a hole would free nothing
            finally:
                os.close(fd)
        except OSError as exc:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            if not self._reserve_tried:
                self.log.warning("recordings event=no-reserve path=%s: %s", path, exc)
            self._reserve_tried = True
            return
        self._reserve_tried = True
        self._reserve_held = True

    def _release_reserve(self, exc: OSError) -> bool:
        """On a full disk, free the reserve once (True: it was there and is gone now).

        Cluster workers on one host share the recordings directory and so the reserve: the
        first to find the disk full frees it for all, and each one makes it again later."""
        if not self._reserve_held or exc.errno not in _FULL:
            return False
        path = self._reserve_path()
        assert path is not None
        self._reserve_held = False
        self._next_reserve_check = time.monotonic() + REPORT_SECONDS
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return False  # already gone (another worker released it)
        self.log.error("recordings event=disk-full-reserve-released bytes=%d path=%s: finalising ended "
                       "recordings first", size, path)
        return True

    def _chores(self) -> None:
        """When idle: put the reserve back once the disk has room for it again."""
        if self._reserve_held or self._failing or self.directory is None or self._reserve_bytes == 0:
            return
        now = time.monotonic()
        if now < self._next_reserve_check:
            return
        self._next_reserve_check = now + REPORT_SECONDS
        try:
            st = os.statvfs(self.directory)
            if st.f_bavail * st.f_frsize < 4 * self._reserve_size():
                return
        except OSError:
            return
        self._make_reserve()

