"""Benchmark the media edge in process: shared sockets (rtp.mux) against a socket per leg
(per_call: on IPv4 the same pool's dedicated ports, read as its poll clock does, via epoll).

N calls on loopback, recording on. Each 20 ms step (simulated time), one socket standing in for every
party sends one PCMU packet per leg (each party from its own 127.x.y.z, as in
bench/load.py), then the B2BUA's readers and its 20 ms tick are run directly, without
an event loop, and their CPU time (process time, kernel included) is what is measured:
receive, demultiplex, relay, record, send. The generator's own sends are outside the
timing. Prints microseconds of B2BUA CPU per relayed packet and the implied packets/s
on one core; the last line is one JSON object.

    python bench/media_edge.py --calls 1000 --seconds 5 [--mode shared|per_call|both] [--polls 10] [--profile]

`--ipv6` (per_call only: shared ports are IPv4): the media on ::1, every party sending from
one ::1 socket per side (IPv6 loopback has one address; a per-call port needs no distinct
source), one sendto per packet (outside the timing: FixedStreams is IPv4).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtp.call import Call, MediaEndpoint, Party  # noqa: E402
from rtp.batch_io import BatchSocket, FixedStreams, recv_count  # noqa: E402
from rtp.engine import MediaEngine  # noqa: E402

PAYLOAD = bytes([0xFF, 0x7F] * 80)


def leg_ip(side: int, i: int) -> str:
    i += 1
    return f"127.{side}.{i >> 8}.{i & 255}"


def make_call(i: int) -> Call:
    return Call(call_id=f"edge-{i:05d}", direction="inbound", from_uri="sip:+441632960999@carrier",
                to_uri="sip:441632960000@pbx", ddi="441632960000", user="alice", started=datetime.now(UTC),
                record_at_answer=True, parties=(Party("external", "carrier"), Party("user", "alice")))


class SimulatedClock:
    """Stands in for the media clock (`MediaEngine.now`): 20 ms per step however long a step
    takes to compute, so the recorder flushes once per simulated second, as in production."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


class Streams6:
    """FixedStreams' interface on IPv6: the rows sent one sendto each (not timed)."""

    def __init__(self, sock: socket.socket, addrs: list[tuple[str, int]], size: int) -> None:
        self.sock = sock
        self.addrs = addrs
        self.buffer = np.zeros((max(len(addrs), 1), size), dtype=np.uint8)

    def send(self) -> int:
        sent = 0
        rows = self.buffer
        for i, addr in enumerate(self.addrs):
            try:
                self.sock.sendto(rows[i].data, addr)
                sent += 1
            except BlockingIOError:
                pass
        return sent


async def run(calls: int, seconds: float, mode: str, profile: bool, polls: int = 1, ipv6: bool = False) -> dict:
    clock = SimulatedClock()
    workdir = Path(tempfile.mkdtemp(prefix="edge-"))
    host = "::1" if ipv6 else "127.0.0.1"
    core = MediaEngine(host, (40000, 40000 + 4 * calls + 64), workdir, shared=mode == "shared")
    core.now = clock.monotonic  # type: ignore[method-assign]
    gens = []
    for side in (1, 2):
        s = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind(("::1" if ipv6 else "0.0.0.0", 0))
        gens.append(s)
    sessions = []
    for i in range(calls):
        session = core.open_session(make_call(i))
        for channel, side in ((0, 1), (1, 2)):
            source = "::1" if ipv6 else leg_ip(side, i)
            session.set_media(channel, MediaEndpoint((source, gens[channel].getsockname()[1]), host))
        session.answered()
        sessions.append(session)
    # Each 20 ms step is read in `polls` rounds, each after a 1/polls share of the legs has
    # sent: the production read clock (rtp.mux.POLL_INTERVAL, 2 ms) sees ~1/10 of a step's
    # packets per read, not all of them at once.
    streams = []
    bounds = np.linspace(0, calls, polls + 1).astype(int)
    for k in range(polls):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        for channel, side in ((0, 1), (1, 2)):
            if hi <= lo:
                continue
            targets = [(host, s.ports[channel]) for s in sessions[lo:hi]]
            if ipv6:
                fs = Streams6(gens[channel], targets, 12 + len(PAYLOAD))
            else:
                fs = FixedStreams(gens[channel], targets, 12 + len(PAYLOAD), [leg_ip(side, i) for i in range(lo, hi)])
            fs.buffer[:, 0] = 0x80
            fs.buffer[:, 8:12] = (np.arange(lo, hi, dtype=np.uint32) | np.uint32(side << 24)).astype(">u4").view(np.uint8).reshape(-1, 4)
            fs.buffer[:, 12:] = np.frombuffer(PAYLOAD, dtype=np.uint8)
            streams.append((k, fs))
    receivers = [BatchSocket(g, 256) for g in gens]
    pool = core.pool
    if mode == "shared":
        readers = [lambda: pool.read(pool.ports)]  # what the 2 ms read clock does (SharedPorts._poll)
    elif pool is not None:  # per-call ports on the same batch path: epoll names the ports to read
        readers = [lambda: pool.read_waiting()]
    else:  # a reader per socket (rtp.engine.MediaSession: IPv6, no recvmmsg)
        readers = [lambda s=s, c=c: s._on_rtp(c) for s in sessions for c in (0, 1)]
    steps = int(seconds / 0.02)
    offered = received = 0
    cpu = 0.0
    user = 0.0  # the part of `cpu` in user space: Python and numpy, the kernel's left out
    loop = 0.0  # the part of `cpu` on this thread (the event loop's): the disk writer's threads left out
    prof = cProfile.Profile() if profile else None
    for step in range(steps):
        clock.now += 0.02
        header = np.frombuffer(int(step & 0xFFFF).to_bytes(2, "big") + int(step * 160).to_bytes(4, "big"), np.uint8)
        for k in range(polls):
            for part, fs in streams:
                if part == k:
                    fs.buffer[:, 2:8] = header
                    offered += fs.send()
            c0 = time.process_time()
            u0 = os.times().user
            l0 = time.thread_time()
            if prof:
                prof.enable()
            for read in readers:
                read()
            if k == polls - 1:
                core._tick_sessions(clock.now)
            if prof:
                prof.disable()
            cpu += time.process_time() - c0
            user += os.times().user - u0
            loop += time.thread_time() - l0
        for r in receivers:
            while (n := recv_count(r)) == r.batch:
                received += n
            received += n
    for session in sessions:
        session.close()
    await core.close()
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(int(os.environ.get("EDGE_PROFILE_LINES", "18")))
    return {"mode": mode, "ipv6": ipv6, "calls": calls, "polls": polls, "packets": offered, "relayed": received,
            "us_per_packet": round(cpu / max(received, 1) * 1e6, 2),
            "user_us_per_packet": round(user / max(received, 1) * 1e6, 2),
            "loop_us_per_packet": round(loop / max(received, 1) * 1e6, 2),
            "packets_per_core_s": int(received / cpu) if cpu else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--mode", choices=["shared", "per_call", "both"], default="both")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ipv6", action="store_true", help="media on ::1 (per_call only)")
    ap.add_argument("--polls", type=int, default=1,
                    help="reads per 20 ms step, each after 1/polls of the legs sent (10: the 2 ms read clock)")
    args = ap.parse_args()
    results = []
    if args.ipv6 and args.mode != "per_call":
        ap.error("--ipv6 needs --mode per_call: shared ports are IPv4 only")
    for mode in (["per_call", "shared"] if args.mode == "both" else [args.mode]):
        r = asyncio.run(run(args.calls, args.seconds, mode, args.profile, args.polls, args.ipv6))
        print(f"{mode:9} calls={r['calls']} relayed={r['relayed']}/{r['packets']} "
              f"{r['us_per_packet']} us/packet ({r['user_us_per_packet']} in user space, {r['loop_us_per_packet']} on the loop's thread) "
              f"-> {r['packets_per_core_s']} packets/s per core")
        results.append(r)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
