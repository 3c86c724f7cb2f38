"""Benchmark the per-packet media path: relay + recorder for N calls, in process.

Sans-IO, no sockets: N calls, each with both parties sending G.711 20 ms packets (50 per
second each way), recording on, and on every 10th call the user pressing *1 every few
seconds (pause, then resume: the prompt is mixed in and the recorder toggles). Simulated
time advances in 20 ms steps; the relays' 20 ms tick runs as rtp/core.py runs it.

Reports packets relayed per wall-clock second, the real-time factor (simulated seconds
per wall-clock second: >= 1 means one core keeps up with N calls), and the peak memory
per call (max RSS growth over the run, divided by N). Packet construction is included in
the timing, so the figures are conservative. The last line is one JSON object.

    python bench/rtp_core.py --calls 100 --seconds 10 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import shutil
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtp.call import Call, MediaEndpoint, Party  # noqa: E402
from rtp import g711  # noqa: E402
from rtp.events import event_payload  # noqa: E402
from rtp.prompts import load_prompts  # noqa: E402
from rtp.fastpath import LegTable  # noqa: E402
from rtp.relay import CallRelay, recorder_factory  # noqa: E402

STEP = 0.02  # one packet time
STAR_ONE_EVERY = 10  # every 10th call presses *1...
STAR_ONE_PERIOD = 3.0  # ...this often (seconds)
EVENT_PT = 101

_HEADER = struct.Struct("!BBHII")


def make_call(i: int) -> Call:
    return Call(
        call_id=f"bench-{i:05d}",
        direction="inbound",
        from_uri="sip:+441632960999@carrier",
        to_uri="sip:441632960000@pbx",
        ddi="441632960000",
        user="alice",
        started=datetime.now(UTC),
        record_at_answer=True,
        parties=(Party("external", "carrier"), Party("user", "alice")),
    )


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run(calls: int, seconds: float, directory: Path, profile: bool) -> dict[str, float]:
    prompts = load_prompts()
    rng = np.random.default_rng(7)
    speech = [g711.encode((rng.standard_normal(160) * 2000).astype(np.int16), 0) for _ in range(50)]
    make_recorder = recorder_factory(directory, "silence")
    rss_before = max_rss_bytes()

    table = LegTable()  # one leg table for every call, as rtp.core.MediaCore has
    relays: list[CallRelay] = []
    addrs: list[tuple[tuple[str, int], tuple[str, int]]] = []
    for i in range(calls):
        relay = CallRelay(make_call(i), prompts, make_recorder, table=table)
        ext = (f"10.{i // 250 % 250}.{i % 250}.1", 20000)
        user = (f"172.16.{i // 250 % 250}.{i % 250}", 30000)
        relay.set_media(0, MediaEndpoint(ext, ext[0]), 0.0)
        relay.set_media(1, MediaEndpoint(user, user[0]), 0.0)
        relay.answered(0.0)
        relays.append(relay)
        addrs.append((ext, user))

    steps = int(seconds / STEP)
    press_steps = int(STAR_ONE_PERIOD / STEP)
    packets = 0
    sent = 0
    pack = _HEADER.pack
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    for step in range(steps):
        now = step * STEP
        seq = step & 0xFFFF
        ts = (step * 160) & 0xFFFFFFFF
        body_ext = speech[step % 50]
        body_user = speech[(step + 25) % 50]
        # A *1 is six event packets per digit, one per step, each beside the audio.
        phase = step % press_steps
        event = None
        if 1 <= phase <= 12:
            code = 10 if phase <= 6 else 1
            k = (phase - 1) % 6
            event = (code, k == 0, event_payload(code, k >= 3, 160 * (k + 1) if k < 3 else 480), (phase - 1) // 6)
        ext_packet = pack(0x80, 0, seq, ts, 0x1111) + body_ext
        for i in range(calls):
            relay = relays[i]
            ext_addr, user_addr = addrs[i]
            sent += len(relay.receive(0, ext_packet, ext_addr, now))
            sent += len(relay.receive(1, pack(0x80, 0, (seq * 2) & 0xFFFF, ts, 0x2222) + body_user, user_addr, now))
            packets += 2
            if event is not None and i % STAR_ONE_EVERY == 0:
                code, marker, payload, which = event
                event_seq = (seq * 2 + 1) & 0xFFFF
                event_ts = (step - step % press_steps + 1 + 6 * which) * 160
                data = pack(0x80, (0x80 if marker else 0) | EVENT_PT, event_seq, event_ts, 0x2222) + payload
                sent += len(relay.receive(1, data, user_addr, now))
                packets += 1
            if relay.busy or now >= relay.next_flush:
                sent += len(relay.tick(now))
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
    peak = max_rss_bytes()
    closing = time.perf_counter()
    for relay in relays:
        relay.close(steps * STEP)
    closing = time.perf_counter() - closing
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(18)
    simulated = steps * STEP
    files = len(list(directory.rglob("*.wav")))
    print(f"calls: {calls}, simulated: {simulated:.1f} s, packets in: {packets}, packets out: {sent}")
    print(f"wall: {elapsed:.2f} s, close/finalise all: {closing:.2f} s, recordings: {files}")
    result = {
        "calls": calls,
        "packets_per_s": round(packets / elapsed),
        "realtime_factor": round(simulated / elapsed, 3),
        "bytes_per_call": round(max(0, peak - rss_before) / calls),
    }
    print(
        f"packets/s: {result['packets_per_s']}, real-time factor: {result['realtime_factor']} "
        f"(simulated s per wall s; >= 1 keeps up), peak memory per call: {result['bytes_per_call']} bytes"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true", help="cProfile the run (slower), top functions to stderr")
    parser.add_argument("--keep", action="store_true", help="keep the recordings directory")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="rtp-bench-"))
    try:
        result = run(args.calls, args.seconds, directory, args.profile)
    finally:
        if args.keep:
            print(f"recordings kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
