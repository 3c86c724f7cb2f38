"""The kernel's floor: what relaying UDP costs one core here before any of our code runs.

Why: issue 6 asks for 2,000 calls (200,000 packets/s relayed) on one core. Whatever the
relay does in Python or numpy, each packet still costs the kernel a receive and a send,
and on loopback the sender also pays the receiver's delivery (there is no NIC: the
destination socket's softirq work runs in the sending system call). This bench measures
that floor with a relay that does nothing else: one socket receives every party's
datagrams `--batch` at a time with recvmmsg and sends each batch on with one sendmmsg to
a sink, rewriting only the destination addresses, each leg's to its own 127.4.x.y looked
up from the datagram's source (as the B2BUA's shared ports route; `--one-sink`: all to one
address, which the kernel does a little cheaper).

The generator (one socket, every party from its own 127.x.y.z through IP_PKTINFO, as in
bench/load.py) and the sink's reads are outside the timing; the relay's process time
(user + system) per relayed datagram is the figure, and from it the packets/s and the
G.711 calls (100 packets/s relayed each) one core could carry if nothing else ran.

    python bench/kernel_floor.py --calls 1000 --seconds 5 [--batch 256 64 16 1] [--ip-id]

Several --batch sizes are run one after the other; `--batch 1` is a system call per
datagram each way, which is what a socket per leg costs at best. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtp.batch_io import _LIBC, MSG_DONTWAIT, BatchMux, BatchSocket, FixedStreams, recv_count  # noqa: E402

SIZE = 172  # a 20 ms PCMU packet
STEP = 0.02


def leg_ip(i: int) -> str:
    i += 1
    return f"127.3.{i >> 8}.{i & 255}"


def shared(calls: int, seconds: float, batch: int, spread: bool, df: bool = True) -> dict:
    """One relay socket for every leg: recvmmsg, rewrite addresses, sendmmsg."""
    legs = 2 * calls
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    relay.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 20)
    relay.bind(("127.0.0.1", 0))
    if df:  # as the B2BUA's media sockets (rtp.ports.bind_socket): DF set, no IP ID drawn per datagram
        relay.setsockopt(socket.IPPROTO_IP, 10, 3)  # IP_MTU_DISCOVER, IP_PMTUDISC_PROBE
    gen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gen.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 20)
    gen.bind(("0.0.0.0", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sink.bind(("0.0.0.0" if spread else "127.0.0.1", 0))
    streams = FixedStreams(gen, [relay.getsockname()] * legs, SIZE, [leg_ip(i) for i in range(legs)])
    streams.buffer[:, 0] = 0x80
    mux = BatchMux(relay, batch)
    sink_port = sink.getsockname()[1]
    if spread:  # each leg to its own 127.4.x.y on the sink's port (the sink is bound to 0.0.0.0)
        table = np.stack([np.frombuffer(mux.sockaddr((leg_ip(i).replace("127.3.", "127.4."), sink_port)), np.uint8)
                          for i in range(legs)])
    else:
        dst = np.frombuffer(mux.sockaddr(("127.0.0.1", sink_port)), np.uint8)
    receiver = BatchSocket(sink, 256)
    steps = int(seconds / STEP)
    offered = relayed = 0
    cpu = 0.0
    for _ in range(steps):
        offered += streams.send()
        c0 = time.process_time()
        while True:
            n = _LIBC.recvmmsg(mux.fd, mux.area._rmsgs, mux.batch, MSG_DONTWAIT, None)
            if n <= 0:
                break
            mux._siov_words[:n, 0] = np.arange(n, dtype=np.uint64) * mux.area.SLOT + mux.area._rbuf.ctypes.data
            mux._siov_words[:n, 1] = mux.area._lens[:n]
            if spread:  # the destination by the datagram's source, as a relay routes
                src = mux.area._sa_addr[:n]
                mux._sa_out[:n] = table[(src >> 24).astype(np.int64) - 1 + ((src >> 16) & 0xFF).astype(np.int64) * 256]
            else:
                mux._sa_out[:n] = dst
            _LIBC.sendmmsg(mux.fd, mux._smsgs, n, MSG_DONTWAIT)
            if n < mux.batch:
                break
        cpu += time.process_time() - c0
        while (k := recv_count(receiver)) == receiver.batch:
            relayed += k
        relayed += k
    for s in (relay, gen, sink):
        s.close()
    return result("spread" if spread else "one_sink", calls, batch, offered, relayed, cpu)


def result(mode: str, calls: int, batch: int, offered: int, relayed: int, cpu: float) -> dict:
    us = cpu / max(relayed, 1) * 1e6
    per_core = int(relayed / cpu) if cpu else 0
    return {"mode": mode, "calls": calls, "batch": batch, "offered": offered, "relayed": relayed,
            "us_per_packet": round(us, 2), "packets_per_core_s": per_core, "calls_per_core": per_core // 100}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=[256])
    ap.add_argument("--one-sink", action="store_true", help="every datagram to one address (else one per leg)")
    ap.add_argument("--ip-id", action="store_true",
                    help="the kernel's default path-MTU discovery (a fresh IP ID per datagram), not the B2BUA's DF setting")
    args = ap.parse_args()
    results = [shared(args.calls, args.seconds, batch, not args.one_sink, not args.ip_id) for batch in args.batch]
    for r in results:
        print(f"{r['mode']:9} calls={r['calls']} batch={r['batch']} relayed={r['relayed']}/{r['offered']} "
              f"{r['us_per_packet']} us/packet -> {r['packets_per_core_s']} packets/s per core "
              f"(~{r['calls_per_core']} G.711 calls if the relay did nothing else)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
