"""A crash-safe PCM WAV writer: the header is valid after every block.

Why our own 44-byte writer rather than soundfile or stdlib `wave`:

- libsndfile (soundfile) writes the final sizes only on close; keeping them current needs
  `SFC_SET_UPDATE_HEADER_AUTO` through `soundfile._snd.sf_command`, a private API, and a
  short write on a full disk leaves libsndfile's idea of the length and the bytes on disk
  out of step with no way to roll back.
- stdlib `wave` does patch the header after each `writeframes`, but through a buffered file:
  on ENOSPC the data may fail on a later implicit flush, after `_datawritten` was already
  counted, so the header can claim bytes that never reached the disk.

Here data goes out with `os.pwrite` on an unbuffered descriptor at a tracked offset, and only
after every byte of a block is written are the two size fields (RIFF at 4, data at 40)
patched. A failure truncates back to the last committed length and raises, so the caller
still owns the block and the file on disk is exactly "everything up to the last good
block" — which is what a kill -9 leaves too. No fsync per block: kill -9 loses nothing the
kernel already has, and surviving power loss would cost a disk flush per call per second;
rtp.disk_writer makes a recording durable once, when it ends, off the event loop.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

HEADER_SIZE = 44  # canonical RIFF/WAVE header: RIFF(12) + fmt chunk(24) + data chunk head(8)
SAMPLE_WIDTH = 2  # signed 16-bit PCM, as the contract requires
MAX_DATA_BYTES = 0xFFFFFFFF - (HEADER_SIZE - 8)  # RIFF sizes are 32-bit: ~37 h of 8 kHz stereo


def wav_header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    """The canonical 44-byte header of a 16-bit PCM WAV holding `data_bytes` of samples."""
    block_align = channels * SAMPLE_WIDTH
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        HEADER_SIZE - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size for PCM
        1,  # WAVE_FORMAT_PCM
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        SAMPLE_WIDTH * 8,
        b"data",
        data_bytes,
    )


class WavWriter:
    """Appends whole frames to a new WAV file, keeping its header true after each block."""

    def __init__(self, path: Path, sample_rate: int, channels: int) -> None:
        """Create `path` (failing if it exists: one file per call, never overwritten)."""
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.channels = channels
        self._frame_bytes = channels * SAMPLE_WIDTH
        self._data_bytes = 0
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._pwrite_all(wav_header(sample_rate, channels, 0), 0)
        except OSError:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)
            raise

    @property
    def frames(self) -> int:
        """Frames safely on disk and counted in the header."""
        return self._data_bytes // self._frame_bytes

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _pwrite_all(self, data: bytes | memoryview, offset: int) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            if written <= 0:  # a zero-length write on a full disk: treat as ENOSPC
                raise OSError(28, "No space left on device (short write)")
            view = view[written:]
            offset += written

    def write(self, frames: bytes | memoryview | np.ndarray | list[np.ndarray]) -> None:
        """Append whole interleaved frames, then patch the sizes; raises OSError on failure.

        `frames` may be a list of blocks (the disk writer joins what waited for one file):
        they go out in one `pwritev` and one header patch. On failure nothing of this call
        counts: the file is cut back to its last committed length (best effort) and the
        header still describes exactly the committed data.
        """
        if self._fd is None:
            raise ValueError(f"write to closed WAV {self.path}")
        blocks = frames if isinstance(frames, list) else [frames]
        views = [memoryview(np.ascontiguousarray(b) if isinstance(b, np.ndarray) else b).cast("B") for b in blocks]
        size = sum(map(len, views))
        if size % self._frame_bytes:
            raise ValueError(f"{size} bytes is not a whole number of {self._frame_bytes}-byte frames")
        if size == 0:
            return
        if self._data_bytes + size > MAX_DATA_BYTES:
            raise OSError(27, "File too large for a RIFF WAV (4 GiB)")
        start = HEADER_SIZE + self._data_bytes
        try:
            if len(views) == 1:
                self._pwrite_all(views[0], start)
            else:
                self._pwritev_all(views, start)
            new_size = self._data_bytes + size
            # Both sizes in one write of the whole (44-byte, one-sector) header: a system
            # call per flush per call saved, and the header is never half-updated.
            self._pwrite_all(wav_header(self.sample_rate, self.channels, new_size), 0)
        except OSError:
            self._rollback()
            raise
        self._data_bytes = new_size

    def _pwritev_all(self, views: list[memoryview], offset: int) -> None:
        assert self._fd is not None
        written = os.pwritev(self._fd, views, offset)
        total = sum(map(len, views))
        if written < total:  # rare (a signal, a nearly full disk): finish it block by block
            self._pwrite_all(memoryview(b"".join(views))[written:], offset + written)

    def extend(self, frames: int) -> None:
        """Append `frames` of silence without writing them: the file is extended (a hole,
        read as zeros, which needs no disk space on Linux filesystems) and the sizes patched.

        Why: paused spans and audio dropped in a long disk outage are silence, and a full
        disk must still be able to take them, so the timeline never shifts."""
        if self._fd is None:
            raise ValueError(f"write to closed WAV {self.path}")
        size = frames * self._frame_bytes
        if size <= 0:
            return
        if self._data_bytes + size > MAX_DATA_BYTES:
            raise OSError(27, "File too large for a RIFF WAV (4 GiB)")
        new_size = self._data_bytes + size
        try:
            os.ftruncate(self._fd, HEADER_SIZE + new_size)
            self._pwrite_all(wav_header(self.sample_rate, self.channels, new_size), 0)
        except OSError:
            self._rollback()
            raise
        self._data_bytes = new_size

    def _rollback(self) -> None:
        """Undo a failed block: restore the sizes and drop any partial bytes."""
        assert self._fd is not None
        try:
            os.pwrite(self._fd, wav_header(self.sample_rate, self.channels, self._data_bytes), 0)
            os.ftruncate(self._fd, HEADER_SIZE + self._data_bytes)
        except OSError:
            pass  # the next successful write overwrites the tail and patches the header

    def close(self) -> None:
        """Close the descriptor; the header is already final."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def repair_wav(path: Path, sample_rate: int, channels: int) -> int:
    """Rewrite the header of an unfinalised WAV from its size; return the frames it holds.

    A partial trailing frame (a write cut off mid-block) is truncated away, so the two
    channels stay aligned. The header is rewritten whole because the recording's format is
    known from its sidecar, which also covers a header that was itself cut short.
    """
    frame_bytes = channels * SAMPLE_WIDTH
    size = os.path.getsize(path)
    data_bytes = max(size - HEADER_SIZE, 0)
    data_bytes = min(data_bytes - data_bytes % frame_bytes, MAX_DATA_BYTES - MAX_DATA_BYTES % frame_bytes)
    fd = os.open(path, os.O_WRONLY)
    try:
        if size < HEADER_SIZE or size != HEADER_SIZE + data_bytes:
            os.ftruncate(fd, HEADER_SIZE + data_bytes)
        header = wav_header(sample_rate, channels, data_bytes)
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)
    return data_bytes // frame_bytes
