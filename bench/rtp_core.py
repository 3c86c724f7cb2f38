"""Benchmark the per-packet media path: relay + recorder for N calls, in process.

Sans-IO, no sockets: N calls, each with both parties sending G.711 20 ms packets (50 per
second each way), recording on, and on every 10th call the user pressing *1 every few
seconds (pause, then resume: the prompt is mixed in and the recorder toggles). Simulated
time advances in 20 ms steps; the relays' 20 ms tick runs as rtp/engine.py runs it.

Reports packets relayed per wall-clock second, the real-time factor (simulated seconds
per wall-clock second: >= 1 means one core keeps up with N calls), and the peak memory
per call (max RSS growth over the run, divided by N). Packet construction is included in
the timing, so the figures are conservative. The last line is one JSON object.

With --memory (issue 17: what one recorded call holds), the run is traced (tracemalloc,
slower) and, in steady state just before the recorders' flush (their fullest moment), prints
the bytes per call by owner: the leg table's rows (stream state and the recorder's wait rows),
the recorders' timelines, the recorders and their writer's queue, the relays, and the
rest; then the same after the flush, and the resident memory (RSS) the calls added. The
signalling side (b2bua/) is in `bench/load.py --memory`.

    python bench/rtp_core.py --calls 100 --seconds 10 [--profile]
    python bench/rtp_core.py --calls 500 --seconds 4 --memory
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
import tracemalloc
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtp.call import Call, MediaEndpoint, Party  # noqa: E402
from rtp.disk_writer import DiskWriter  # noqa: E402
from rtp import g711  # noqa: E402
from rtp.events import event_payload  # noqa: E402
from rtp.prompts import load_prompts  # noqa: E402
from rtp.fastpath import STATE_FIELDS, LegTable  # noqa: E402
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


# -- --memory: who holds what ------------------------------------------------------------------

#: Owners, by the project file that allocated (the innermost frame in rtp/ or bench/).
OWNERS = (
    ("rtp/fastpath.py", "leg table: stream state + recorder wait rows (rtp/fastpath.py)"),
    ("rtp/timeline.py", "recorder timelines + stream clocks (rtp/timeline.py)"),
    ("rtp/recorder.py", "recorder objects, waiting lists, sidecar dicts (rtp/recorder.py)"),
    ("rtp/disk_writer.py", "writer queue and file handles (rtp/disk_writer.py)"),
    ("rtp/g711.py", "decode scratch (rtp/g711.py)"),
    ("rtp/", "relay, legs, key-press machines (rtp/ other)"),
    ("bench/", "the bench's own calls and addresses (not the engine's)"),
)


def owner_of(trace: tracemalloc.Trace) -> str:
    for frame in reversed(trace.traceback):  # tracemalloc keeps the oldest frame first
        name = frame.filename.replace("\\", "/")
        for key, owner in OWNERS:
            if key in name:
                return owner
    return "other (interpreter, numpy, stdlib)"


def breakdown(before: tracemalloc.Snapshot, now: tracemalloc.Snapshot, calls: int) -> dict[str, int]:
    """Bytes per call by owner: what `now` holds that `before` did not (by allocation site)."""
    totals: dict[str, int] = defaultdict(int)
    for trace in now.traces:
        totals[owner_of(trace)] += trace.size
    for trace in before.traces:
        totals[owner_of(trace)] -= trace.size
    return {owner: size // calls for owner, size in sorted(totals.items(), key=lambda kv: -kv[1])}


def counted(table: LegTable, relays: list[CallRelay], writer: DiskWriter) -> dict[str, int]:
    """The big buffers counted directly (bytes per call), as a check on the traced figures."""
    calls = len(relays)
    wait = table.wpos.nbytes + table.wlen.nbytes + table.wbuf.nbytes
    arrays = sum(getattr(table, name).nbytes for name in vars(table)
                 if isinstance(getattr(table, name), np.ndarray) and getattr(table, name).base is None)
    state = sum(getattr(table, "py_" + name).buffer_info()[1] * 8 for name, _ in STATE_FIELDS)
    timelines = sum(relay.recorder._timeline._buf.nbytes for relay in relays if relay.recorder is not None)
    held = sum(relay.recorder._timeline._end * 4 for relay in relays if relay.recorder is not None)
    print(f"  leg table capacity: {table._size} legs for {calls} calls")
    return {
        "leg table wait rows": wait // calls,
        "leg table other arrays": (arrays - wait + state) // calls,
        "timeline buffers (allocated)": timelines // calls,
        "timeline audio held (frames x 4 bytes)": held // calls,
        "writer backlog": writer.stats().backlog_bytes // calls,
    }


def print_breakdown(title: str, figures: dict[str, int]) -> None:
    print(f"{title}:")
    total = 0
    for owner, size in figures.items():
        print(f"  {size / 1024:8.1f} KB  {owner}")
        total += size
    print(f"  {total / 1024:8.1f} KB  total")


def run(calls: int, seconds: float, directory: Path, profile: bool, memory: bool = False) -> dict[str, float]:
    prompts = load_prompts()
    rng = np.random.default_rng(7)
    speech = [g711.encode((rng.standard_normal(160) * 2000).astype(np.int16), 0) for _ in range(50)]
    writer = DiskWriter(threaded=False, durable=False)  # one writer for every recording, as rtp.engine has
    make_recorder = recorder_factory(directory, "silence", writer=writer)
    rss_before = max_rss_bytes()
    if memory:
        tracemalloc.start(4)
        traced_before = tracemalloc.take_snapshot()

    table = LegTable()  # one leg table for every call, as rtp.engine.MediaEngine has
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
    # --memory: the snapshots, taken in the last whole second just before and after the
    # recorders' flush (all calls answered at 0, so they all flush on the second).
    flush_step = int(round(int(seconds - 1) / STEP)) if seconds >= 2 else -1
    for step in range(steps):
        now = step * STEP
        if memory and step in (flush_step - 1, flush_step + 1):
            snapshot = tracemalloc.take_snapshot()
            when = "just before the flush" if step < flush_step else "just after the flush"
            print_breakdown(f"traced, {when} (t={now:.2f} s), bytes per call by owner",
                            breakdown(traced_before, snapshot, calls))
            print_breakdown("counted directly", counted(table, relays, writer))
            del snapshot
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
    if memory:
        tracemalloc.stop()
    if profiler:
        profiler.disable()
    peak = max_rss_bytes()
    closing = time.perf_counter()
    for relay in relays:
        relay.close(steps * STEP)
    writer.drain()
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
    parser.add_argument("--memory", action="store_true",
                        help="trace allocations; print the bytes per call by owner before and after a flush")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="rtp-bench-"))
    try:
        result = run(args.calls, args.seconds, directory, args.profile, args.memory)
    finally:
        if args.keep:
            print(f"recordings kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
