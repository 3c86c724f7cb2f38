"""One call's recording: a two-channel WAV and its JSON sidecar (contract: "Recordings").

The media engine hands over G.711 packets it already placed on the call timeline with
`place_g711()` (its leg clocks follow `StreamClock`'s rules against `timeline_base`); a
caller without its own clocks feeds each packet with `add_g711()` (or decoded samples with
`add()`), placed by the recorder's own `StreamClock`s. `set_recording()` follows the
policy at answer and each *1; `flush(now)`, called about every `FLUSH_INTERVAL_SECONDS`, writes every position older than the jitter window;
`close(now)` finalises. No clock is read except once, at construction, for the wall-clock
time of `t0` (`wall_t0`), which dates the sidecar.

Timeline (see `rtp.timeline`): positions are samples since `t0`. The file starts at the
position where recording first starts; in "silence" mode file position = timeline position
minus that start, paused spans being zeros; in "skip" mode the paused spans are left out.

Batching: `add_g711()` works out the packet's position at once (the `StreamClock`, cheap
Python arithmetic, against the timeline's current base) but only keeps (position, payload).
The numpy work, decoding and placing, is done for all of a channel's waiting packets at once
(one join, one table lookup, one scatter: `Timeline.place_many`) before anything reads or
moves the timeline: `flush`, `close`, `set_recording`, an `add()` of decoded samples, a change
of payload type, or `MAX_WAITING_PACKETS` waiting. The timeline's base only moves in
`flush`/`close`, after that, so every waiting packet is placed against the same base its
position was computed with: the result is the same, sample for sample, as placing each
packet as it came.

Disk: the recorder is sans-IO. It turns audio into commands on its `RecordingFiles` handle
(rtp.disk_writer): the file created with its sidecar at the first start, finished frames
appended at each flush, the sidecar replaced at each pause and resume, finalised at close. The
writer thread performs them in order, so media never waits on the disk: `set_recording`,
`flush` and `close` open, write and sync nothing themselves. The WAV header is true after
every block the writer writes (`rtp.wavfile`), so a kill -9 leaves a playable file of
everything up to the last flush the writer performed (milliseconds behind the loop). A full
disk: the writer keeps the audio (bounded), retries, and always finishes the sidecar
(rtp.disk_writer). `repair()` fixes recordings a crash left unfinalised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from rtp.call import Call
from rtp import g711
from rtp.disk_writer import DiskWriter, RecordingFiles
from rtp.sidecar import describe_call, iso_utc, read_sidecar, write_sidecar
from rtp.timeline import CHANNELS, SAMPLE_RATE, StreamClock, Timeline
from rtp.wavfile import repair_wav

# A packet arriving up to this late still lands in its place. Adaptive jitter buffers in
# phones top out around 200 ms (and ITU-T G.114 puts 150 ms one-way as the quality limit),
# so later audio would have been discarded by a listener anyway. With flushes every
# second, at most FLUSH_INTERVAL + JITTER_WINDOW of audio is only in memory at any time.
JITTER_WINDOW_SECONDS = 0.2
JITTER_WINDOW_SAMPLES = int(JITTER_WINDOW_SECONDS * SAMPLE_RATE)
# How often the owner should call flush(): what a crash may lose, against one write and
# two header patches per call per flush (2,000 calls: ~6,000 small syscalls a second).
FLUSH_INTERVAL_SECONDS = 1.0
PAUSE_MODES = ("silence", "skip")  # contract: [server] pause
# G.711 packets held per channel before they are decoded and placed anyway: a flush a second
# holds 50 (20 ms packets); this bounds memory if a party floods or flushes stop coming.
MAX_WAITING_PACKETS = 256

_default_log = logging.getLogger(__name__)


class Recorder:
    """Records one call; created at answer with `t0` = the answer's monotonic time.

    If `call.record_at_answer` (and the organisation records at all), recording starts at
    construction, at `t0`: a caller that also calls `set_recording(True, t0, None)` at
    answer changes nothing. With `call.recording_enabled` false the recorder does nothing.
    `wall_t0` is the UTC wall-clock time matching `t0`; it defaults to now, the one clock
    read here, taken at construction so everything after it is driven by the caller's `now`.

    `writer` performs the disk work (the media core passes its threaded one); without it the
    recorder writes through a `DiskWriter(threaded=False)` of its own, synchronously, which
    suits tools and tests but not the event loop. `on_finalised(sidecar_path)` is called on
    the event loop's thread once the WAV and the final sidecar are durable (with no running
    loop at construction: by the writer's `drain()`, on its caller's thread).
    """

    def __init__(
        self,
        directory: Path,
        call: Call,
        pause_mode: str,
        t0: float,
        *,
        wall_t0: datetime | None = None,
        log: logging.Logger | None = None,
        writer: DiskWriter | None = None,
        on_finalised: Callable[[Path], None] | None = None,
    ) -> None:
        if pause_mode not in PAUSE_MODES:
            raise ValueError(f"pause mode must be one of {PAUSE_MODES}, not {pause_mode!r}")
        if not call.call_id or "/" in call.call_id or "\\" in call.call_id or call.call_id in (".", ".."):
            raise ValueError(f"call id {call.call_id!r} cannot name a file")
        self.call = call
        self.pause_mode = pause_mode
        self._skip = pause_mode == "skip"
        self._t0 = t0
        self._wall_t0 = wall_t0 if wall_t0 is not None else datetime.now(UTC)
        self._log = log if log is not None else _default_log
        started = call.started if call.started.tzinfo else call.started.replace(tzinfo=UTC)
        day = started.astimezone(UTC)
        folder = Path(directory) / f"{day.year:04d}" / f"{day.month:02d}" / f"{day.day:02d}"
        self.wav_path = folder / f"{call.call_id}.wav"
        self.json_path = folder / f"{call.call_id}.json"
        self._writer = writer if writer is not None else DiskWriter(threaded=False, log=self._log, durable=False)
        self._on_finalised = on_finalised
        self._files: RecordingFiles | None = None  # created at the first start

        self._enabled = call.recording_enabled
        self._clocks = tuple(StreamClock() for _ in range(CHANNELS))
        self._timeline = Timeline(CHANNELS)
        # G.711 packets not yet decoded and placed, per channel: positions, payloads, and
        # the payload type they all share (-1: none yet).
        self._waiting_pos: tuple[list[int], list[int]] = ([], [])
        self._waiting_data: tuple[list[bytes], list[bytes]] = ([], [])
        self._waiting_pt = [-1, -1]
        self._recording = False
        self._file_start: int | None = None  # timeline position of the file's first frame
        self._spans: list[list[int | None]] = []  # recorded [start, end) positions; end None: open
        self._span_cursor = 0  # spans before this end before the timeline base
        self._events: list[tuple[int, str, str | None]] = []  # (position, event, by)
        self._ended: datetime | None = None
        self._closed = False
        if self._enabled and call.record_at_answer:
            self.set_recording(True, t0, None)

    # -- feeding -------------------------------------------------------------------------

    @property
    def recording(self) -> bool:
        """Whether audio arriving now is recorded."""
        return self._recording

    def _pos(self, t: float) -> int:
        return round((t - self._t0) * SAMPLE_RATE)

    def add(self, channel: int, ssrc: int, seq: int, timestamp: int, samples: np.ndarray,
            arrival: float) -> None:
        """Place one packet's decoded int16 samples (channel 0: external party, 1: user)."""
        if self._closed or not self._enabled or samples.shape[0] == 0:
            return
        if channel != 0 and channel != 1:
            raise ValueError(f"channel must be 0 or 1, not {channel!r}")
        if self._waiting_pos[channel]:
            self._place_waiting(channel)  # earlier packets first: a later one must win an overlap
        timeline = self._timeline
        pos = self._clocks[channel].position(
            ssrc, seq & 0xFFFF, timestamp & 0xFFFFFFFF, samples.shape[0],
            round((arrival - self._t0) * SAMPLE_RATE), timeline.base,
        )
        timeline.place(channel, pos, samples)

    def add_g711(self, channel: int, ssrc: int, seq: int, timestamp: int, payload: bytes,
                 payload_type: int, arrival: float) -> None:
        """One packet's G.711 payload (PT 0 PCMU or 8 PCMA), as `add` would place it decoded.

        Its position is decided now; decoding and placing wait for the next flush (see
        "Batching" above), so `payload` is kept: a bytes object, or it is copied.
        """
        n = len(payload)
        if n == 0 or self._closed or not self._enabled:
            return
        if channel != 0 and channel != 1:
            raise ValueError(f"channel must be 0 or 1, not {channel!r}")
        if payload_type != self._waiting_pt[channel]:
            self._switch_payload_type(channel, payload_type)
        if payload.__class__ is not bytes:
            payload = bytes(payload)  # a view of a buffer the caller reuses would change under us
        timeline = self._timeline
        pos = self._clocks[channel].position(
            ssrc, seq & 0xFFFF, timestamp & 0xFFFFFFFF, n, round((arrival - self._t0) * SAMPLE_RATE), timeline.base,
        )
        positions = self._waiting_pos[channel]
        positions.append(pos)
        self._waiting_data[channel].append(payload)
        if len(positions) >= MAX_WAITING_PACKETS:
            self._place_waiting(channel)

    @property
    def timeline_base(self) -> int:
        """The timeline's first position not yet final: the media engine places a packet
        before it as late (its `StreamClock` horizon). Moves only in `flush` and `close`."""
        return self._timeline.base

    def place_g711(self, channel: int, payload_type: int, positions: np.ndarray, lengths: np.ndarray,
                   payloads: np.ndarray) -> None:
        """G.711 packets the media engine already placed on the call timeline (rtp.relay's
        leg clocks, `StreamClock` rules against `timeline_base`), in arrival order:
        `payloads` holds their payloads end to end (uint8, `lengths[i]` bytes for packet i).
        Decoded and placed now, in one lookup and one scatter, after anything waiting from
        `add_g711`; the arrays are the caller's and reused after this returns."""
        if not len(positions) or self._closed or not self._enabled:
            return
        if channel != 0 and channel != 1:
            raise ValueError(f"channel must be 0 or 1, not {channel!r}")
        if payload_type != self._waiting_pt[channel]:
            self._switch_payload_type(channel, payload_type)
        if self._waiting_pos[channel]:
            self._place_waiting(channel)  # earlier packets first: a later one must win an overlap
        self._place_codes(channel, positions.tolist(), lengths.tolist(), payloads)  # lists: cheaper than numpy on ~50

    def _switch_payload_type(self, channel: int, payload_type: int) -> None:
        if payload_type not in g711.PAYLOAD_TYPES:
            raise g711.not_g711(payload_type)
        if self._waiting_pos[channel]:
            self._place_waiting(channel)
        self._waiting_pt[channel] = payload_type

    def _place_waiting(self, channel: int) -> None:
        """Decode and place every waiting packet of `channel`: one lookup, one scatter."""
        positions = self._waiting_pos[channel]
        if not positions:
            return
        payloads = self._waiting_data[channel]
        self._place_codes(channel, positions, list(map(len, payloads)), np.frombuffer(b"".join(payloads), np.uint8))
        positions.clear()
        payloads.clear()

    def _place_codes(self, channel: int, positions: list[int], sizes: list[int], codes: np.ndarray) -> None:
        """Decode G.711 `codes` (every packet's payload, in order, in the channel's waiting
        payload type) with one table lookup and place them with one `place_many`."""
        samples = g711.decode_codes(codes, self._waiting_pt[channel])
        self._timeline.place_many(channel, positions, sizes, samples)

    def _place_all_waiting(self) -> None:
        if self._waiting_pos[0]:
            self._place_waiting(0)
        if self._waiting_pos[1]:
            self._place_waiting(1)

    def set_recording(self, on: bool, now: float, by: str | None) -> None:
        """Start, pause or resume at `now`; `by` is the user who pressed *1 (None: policy).

        The first start creates the file; later changes add a sidecar event. Asking for
        the state already in force does nothing.
        """
        if self._closed or not self._enabled or on == self._recording:
            return
        self._place_all_waiting()  # what arrived before the change is on the timeline first
        pos = max(self._pos(now), self._timeline.base)
        if self._spans:
            pos = max(pos, self._spans[-1][0], self._spans[-1][1] or 0)  # type: ignore[type-var]
        if on:
            first = self._file_start is None
            if first:
                self._file_start = pos
            if self._spans and self._spans[-1][1] == pos:
                self._spans[-1][1] = None  # resumed at the very position it paused: one span
            else:
                self._spans.append([pos, None])
            if not first or by is not None:
                self._events.append((pos, "resumed", by))
        else:
            span = self._spans[-1]
            span[1] = pos
            self._events.append((pos, "paused", by))
        self._recording = on
        if on and first:
            self._files = self._writer.recording(self.wav_path, self.json_path, SAMPLE_RATE, CHANNELS,
                                                 self.call.call_id, self._on_finalised)
            self._files.open(self._sidecar())
        else:
            self._files.sidecar(self._sidecar())  # type: ignore[union-attr]
        event = ("started" if first else "resumed") if on else "paused"
        self._log.info("call=%s event=recording-%s by=%s t=%.2f path=%s", self.call.call_id, event,
                       by or "policy", (pos - self._file_start) / SAMPLE_RATE, self.wav_path)

    # -- writing -------------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Hand the writer everything older than the jitter window."""
        if self._closed or not self._enabled:
            return
        self._place_all_waiting()
        self._finalise(self._pos(now) - JITTER_WINDOW_SAMPLES)

    def close(self, now: float) -> None:
        """Finalise at `now`: end the recording, write all audio, set `ended` in the sidecar."""
        if self._closed:
            return
        if not self._enabled:
            self._closed = True
            return
        self._place_all_waiting()
        end = max(self._pos(now), self._timeline.base)
        if self._recording:
            last = self._spans[-1]
            last[1] = max(end, last[0])  # type: ignore[type-var]
            self._recording = False
        self._finalise(end)
        self._ended = self._wall_t0 + timedelta(seconds=now - self._t0)
        self._closed = True
        if self._file_start is None:
            return  # never recorded: no file at all
        self._files.finish(self._sidecar())  # type: ignore[union-attr]  (the writer logs it when durable)

    @property
    def silenced_frames(self) -> int:
        """Finished audio the writer had to keep as silence (a long disk outage)."""
        return self._files.silenced_frames if self._files is not None else 0

    def _finalise(self, upto: int) -> None:
        """Hand the writer timeline positions below `upto`, in file order."""
        timeline = self._timeline
        base = timeline.base
        if upto <= base:
            return
        start = self._file_start
        lo = base if start is None else max(base, start)
        if start is None or lo >= upto:
            timeline.discard(upto)
            return
        spans = self._spans
        while self._span_cursor < len(spans):
            end = spans[self._span_cursor][1]
            if end is not None and end <= lo:
                self._span_cursor += 1
            else:
                break
        overlaps: list[tuple[int, int]] = []
        for span_start, span_end in spans[self._span_cursor:]:
            if span_start >= upto:  # type: ignore[operator]
                break
            s = max(span_start, lo)  # type: ignore[type-var]
            e = upto if span_end is None else min(span_end, upto)
            if e > s:
                overlaps.append((s, e))
        if not overlaps:
            timeline.discard(upto)
            if not self._skip:
                self._queue(upto - lo)
            return
        frames = timeline.take(upto)
        if self._skip:
            parts = [frames[s - base : e - base] for s, e in overlaps]
            self._queue(parts[0] if len(parts) == 1 else np.concatenate(parts))
            return
        frames = frames[lo - base :]
        if overlaps != [(lo, upto)]:
            kept = np.zeros_like(frames)
            for s, e in overlaps:
                kept[s - lo : e - lo] = frames[s - lo : e - lo]
            frames = kept
        self._queue(frames)

    def _queue(self, item: np.ndarray | int) -> None:
        """Finished frames (an array the writer now owns) or a silence length, to the file."""
        files = self._files
        assert files is not None
        if isinstance(item, int):
            files.silence(item)
        else:
            files.write(item)

    # -- sidecar -------------------------------------------------------------------------

    def _file_time(self, pos: int) -> float:
        """Seconds into the file of timeline position `pos` (within or at a span's edge)."""
        assert self._file_start is not None
        if not self._skip:
            return (pos - self._file_start) / SAMPLE_RATE
        recorded = 0
        for start, end in self._spans:
            if start >= pos:  # type: ignore[operator]
                break
            recorded += (pos if end is None or end > pos else end) - start  # type: ignore[operator]
        return recorded / SAMPLE_RATE

    def _sidecar(self) -> dict[str, Any]:
        assert self._file_start is not None
        started = self._wall_t0 + timedelta(seconds=self._file_start / SAMPLE_RATE)
        segments = []
        for start, end in self._spans:
            s = self._file_time(start)  # type: ignore[arg-type]
            segments.append([s, None if end is None else s + self._span_length(start, end)])
        data = describe_call(self.call)
        data.update(
            {
                "started": iso_utc(started),
                "ended": iso_utc(self._ended),
                "sample_rate": SAMPLE_RATE,
                "channels": CHANNELS,
                "pause": self.pause_mode,
                "segments": segments,
                "events": [
                    {"t": self._file_time(pos), "event": event, "by": by}
                    for pos, event, by in self._events
                ],
            }
        )
        return data  # the writer adds what only it knows (silenced_s, unwritten_s)

    def _span_length(self, start: int | None, end: int) -> float:
        return (end - start) / SAMPLE_RATE  # type: ignore[operator]


def repair(directory: Path, log: logging.Logger | None = None, live: Callable[[Path], bool] | None = None) -> list[Path]:
    """Fix recordings left unfinalised by a crash; return the WAV paths repaired.

    Run at start-up, before any call records (a live recording also has `ended` null). For
    each sidecar with `ended` null and not already `recovered`: the WAV's header sizes are
    rewritten from its length (a partial last frame cut off), an open segment is closed at
    the end of the audio, and the sidecar gets `"recovered": true` (`ended` stays null:
    when the call really ended is unknown).

    `live(wav_path)` true means another process is still writing that recording (a
    cluster's other workers share the directory): it is left alone.
    """
    log = log if log is not None else _default_log
    repaired: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return repaired
    for json_path in sorted(root.rglob("*.json")):
        try:
            data = read_sidecar(json_path)
        except (OSError, ValueError) as exc:
            log.warning("repair: skipping unreadable sidecar %s: %s", json_path, exc)
            continue
        if data.get("ended") is not None or data.get("recovered"):
            continue
        wav_path = json_path.with_suffix(".wav")
        if live is not None and live(wav_path):
            continue
        rate = int(data.get("sample_rate", SAMPLE_RATE))
        channels = int(data.get("channels", CHANNELS))
        try:
            frames = repair_wav(wav_path, rate, channels) if wav_path.exists() else 0
            duration = frames / rate
            segments = data.get("segments") or []
            if segments and segments[-1][1] is None:
                segments[-1][1] = max(duration, segments[-1][0])
            data["ended"] = None
            data["recovered"] = True
            write_sidecar(json_path, data)
        except OSError as exc:
            log.error("repair: cannot repair %s: %s", wav_path, exc)
            continue
        log.warning("repair: recovered unfinalised recording %s (%.1f s)", wav_path, duration)
        if wav_path.exists():
            repaired.append(wav_path)
    return repaired
