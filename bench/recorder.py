"""How many call-seconds of two-channel recording one CPU second handles (add + flush + write).

Run: python bench/recorder.py [calls] [seconds] [mode] [writer] [load]. Packets are 20 ms each, both
channels, flushed every second as the relay would; files go to a temporary directory.
writer: "thread" (the default, as the media core runs it: the disk work on rtp.disk_writer's
threads, and the loop's CPU reported apart from theirs) or "inline" (the disk work on this
thread, as the recorder did before the writer existed). load (default 1): below 1, this thread
sleeps after each 20 ms step so that it is busy that share of the time, as an event loop
below saturation is; the writer thread works in the gaps (with none, it only gets the GIL at
the interpreter's forced switches and falls behind until the end). Modes:
"add" (the default): pre-decoded int16 through `add()`, G.711 decode measured separately
at the end; "decode+add": each µ-law payload decoded as it arrives, then `add()` (what the
relay did per packet before `add_g711`); "g711": the raw payload through `add_g711()`,
decoded and placed at each flush.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtp.call import Call  # noqa: E402
from rtp import g711  # noqa: E402
from rtp.disk_writer import DiskWriter  # noqa: E402
from rtp.recorder import Recorder  # noqa: E402

N = 160


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    mode = sys.argv[3] if len(sys.argv) > 3 else "add"
    if mode not in ("add", "decode+add", "g711"):
        raise SystemExit(f"mode must be add, decode+add or g711, not {mode!r}")
    threaded = (sys.argv[4] if len(sys.argv) > 4 else "thread") == "thread"
    load = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    rng = np.random.default_rng(0)
    payloads = [rng.integers(-8000, 8000, N).astype(np.int16) for _ in range(50)]
    encoded = [g711.encode_ulaw(p) for p in payloads]
    ulaw = g711.ULAW_DECODE
    with tempfile.TemporaryDirectory() as tmp:
        started = datetime.now(UTC)
        writer = DiskWriter(Path(tmp), threaded=threaded)
        writer.start()
        recorders = [
            Recorder(Path(tmp), Call(f"bench{i}", "inbound", "a", "b", None, "u", started,
                                     record_at_answer=True), "silence", 0.0, wall_t0=started, writer=writer)
            for i in range(calls)
        ]
        cpu = time.process_time()
        loop_cpu = time.thread_time()  # this thread only: the event loop's share
        flush_cpu = 0.0
        worst_backlog = 0.0
        for k in range(seconds * 50):
            t = k * 0.02
            step = time.thread_time()
            for i, rec in enumerate(recorders):
                if mode == "g711":
                    payload = encoded[(k + i) % 50]
                    rec.add_g711(0, 1, k & 0xFFFF, k * N, payload, 0, t)
                    rec.add_g711(1, 2, k & 0xFFFF, k * N, payload, 0, t)
                elif mode == "decode+add":
                    payload = encoded[(k + i) % 50]
                    rec.add(0, 1, k & 0xFFFF, k * N, ulaw.take(np.frombuffer(payload, np.uint8)), t)
                    rec.add(1, 2, k & 0xFFFF, k * N, ulaw.take(np.frombuffer(payload, np.uint8)), t)
                else:
                    samples = payloads[(k + i) % 50]
                    rec.add(0, 1, k & 0xFFFF, k * N, samples, t)
                    rec.add(1, 2, k & 0xFFFF, k * N, samples, t)
            if k % 50 == 49:
                f0 = time.thread_time()
                for rec in recorders:
                    rec.flush(t)
                flush_cpu += time.thread_time() - f0
            if load < 1.0:
                time.sleep((time.thread_time() - step) * (1 / load - 1))
            worst_backlog = max(worst_backlog, writer.stats().backlog_seconds)
        for rec in recorders:
            rec.close(seconds)
        loop_cpu = time.thread_time() - loop_cpu
        backlog = writer.stats().backlog_seconds
        wall = time.perf_counter()
        writer.close(600)
        drain = time.perf_counter() - wall
        cpu = time.process_time() - cpu
    call_seconds = calls * seconds
    print(f"{mode}: {calls} calls x {seconds} s: {cpu:.2f} CPU s -> "
          f"{call_seconds / cpu:.0f} call-seconds per CPU second "
          f"({cpu / (calls * seconds * 100) * 1e6:.1f} us per packet incl. flush)")
    print(f"on the loop's thread: {loop_cpu:.2f} CPU s, of which flush() {flush_cpu:.2f} s "
          f"({flush_cpu / (calls * seconds) * 1e6:.1f} us per recording per flush); "
          f"{'threaded' if threaded else 'inline'} writer: at most {worst_backlog:.0f} s of audio waiting, "
          f"{backlog:.0f} s at the end, "
          f"drained in {drain:.2f} s")
    payload = g711.encode_ulaw(payloads[0])
    reps = 200_000
    t = time.perf_counter()
    for _ in range(reps):
        g711.decode_ulaw(payload)
    dt = time.perf_counter() - t
    print(f"g711 decode of one 160-byte packet: {dt / reps * 1e6:.2f} us")


if __name__ == "__main__":
    main()
