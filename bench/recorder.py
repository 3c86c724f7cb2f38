"""How many call-seconds of two-channel recording one CPU second handles (add + flush + write).

Run: python bench/recorder.py [calls] [seconds] [mode]. Packets are 20 ms each, both
channels, flushed every second as the relay would; files go to a temporary directory. Modes:
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
from rtp.recorder import Recorder  # noqa: E402

N = 160


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    mode = sys.argv[3] if len(sys.argv) > 3 else "add"
    if mode not in ("add", "decode+add", "g711"):
        raise SystemExit(f"mode must be add, decode+add or g711, not {mode!r}")
    rng = np.random.default_rng(0)
    payloads = [rng.integers(-8000, 8000, N).astype(np.int16) for _ in range(50)]
    encoded = [g711.encode_ulaw(p) for p in payloads]
    ulaw = g711.ULAW_DECODE
    with tempfile.TemporaryDirectory() as tmp:
        started = datetime.now(UTC)
        recorders = [
            Recorder(Path(tmp), Call(f"bench{i}", "inbound", "a", "b", None, "u", started,
                                     record_at_answer=True), "silence", 0.0, wall_t0=started)
            for i in range(calls)
        ]
        cpu = time.process_time()
        for k in range(seconds * 50):
            t = k * 0.02
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
                for rec in recorders:
                    rec.flush(t)
        for rec in recorders:
            rec.close(seconds)
        cpu = time.process_time() - cpu
    call_seconds = calls * seconds
    print(f"{mode}: {calls} calls x {seconds} s: {cpu:.2f} CPU s -> "
          f"{call_seconds / cpu:.0f} call-seconds per CPU second "
          f"({cpu / (calls * seconds * 100) * 1e6:.1f} us per packet incl. flush)")
    payload = g711.encode_ulaw(payloads[0])
    reps = 200_000
    t = time.perf_counter()
    for _ in range(reps):
        g711.decode_ulaw(payload)
    dt = time.perf_counter() - t
    print(f"g711 decode of one 160-byte packet: {dt / reps * 1e6:.2f} us")


if __name__ == "__main__":
    main()
