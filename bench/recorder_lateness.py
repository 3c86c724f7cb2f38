"""How late the media tick runs while recordings are written: the disk writer's thread against
the writes done on the loop itself.

Run: python bench/recorder_lateness.py [calls] [seconds] [thread|inline]. An event loop (uvloop)
runs a 20 ms tick that gives every call's recorder one G.711 packet per channel and flushes a
50th of them (each once a second, staggered, as rtp.engine schedules flushes); files go to a
temporary directory. Prints the tick's lateness after the first 3 s (all calls start at once
here, so the start is a burst of file creation no real day has) as p50, p99 and max in ms, the loop thread's CPU
and the writer's backlog: with "inline", every pwrite, file creation and sidecar is on the loop.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtp import g711  # noqa: E402
from rtp.call import Call  # noqa: E402
from rtp.disk_writer import DiskWriter  # noqa: E402
from rtp.recorder import Recorder  # noqa: E402

N = 160


async def run(calls: int, seconds: float, threaded: bool, directory: Path) -> None:
    loop = asyncio.get_running_loop()
    writer = DiskWriter(directory, threaded=threaded)
    writer.start()
    started = datetime.now(UTC)
    t0 = loop.time()
    recorders = [Recorder(directory, Call(f"late{i}", "inbound", "a", "b", None, "u", started, record_at_answer=True),
                          "silence", t0, wall_t0=started, writer=writer) for i in range(calls)]
    payload = g711.encode(np.random.default_rng(0).integers(-8000, 8000, N).astype(np.int16), g711.PCMU)
    late: list[float] = []
    worst_backlog = 0.0
    cpu = time.thread_time()
    due = time.monotonic() + 0.02  # the loop's own clock (uvloop) counts whole milliseconds
    for k in range(int(seconds * 50)):
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        late.append(time.monotonic() - due)
        now = loop.time()
        for rec in recorders:
            rec.add_g711(0, 1, k & 0xFFFF, k * N, payload, g711.PCMU, now)
            rec.add_g711(1, 2, k & 0xFFFF, k * N, payload, g711.PCMU, now)
        for rec in recorders[k % 50 :: 50]:
            rec.flush(now)
        worst_backlog = max(worst_backlog, writer.stats().backlog_seconds)
        due += 0.02
    end = loop.time()
    for rec in recorders:
        rec.close(end)
    cpu = time.thread_time() - cpu
    drained = await writer.aclose(60)
    ms = np.array(late[150:]) * 1000  # after 3 s: every file created (all calls start at once here)
    print(f"{'thread' if threaded else 'inline'}: {calls} calls x {seconds:.0f} s: tick lateness p50 "
          f"{np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.2f} ms; "
          f"loop thread {cpu:.2f} CPU s; writer backlog at most {worst_backlog:.1f} s of audio, drained={drained}")


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10
    threaded = (sys.argv[3] if len(sys.argv) > 3 else "thread") == "thread"
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    with tempfile.TemporaryDirectory() as tmp:
        runner(run(calls, seconds, threaded, Path(tmp)))


if __name__ == "__main__":
    main()
