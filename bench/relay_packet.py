"""Benchmark one packet through `CallRelay.receive`: the per-packet path every packet of a
per-call-ports call takes (and a shared-port packet the batch lane declines).

One relay, 1,000 G.711 packets of one party (20 ms apart in simulated time), the relay's
tick (the recorder's flush) once a simulated second; recording on, then off. What is timed
is the CPU time of this thread over each second's 50 `receive` calls (the tick and the
recorder's writer thread left out), best of `--repeat` relays. Prints microseconds per
packet; the last line is one JSON object.

    python bench/relay_packet.py [--repeat 15]

It runs on older trees too (before `rtp.call`), to compare one with another: copy it out
of the tree (it puts its own tree first on the path) and run it with the other tree's
path, e.g. `cp bench/relay_packet.py /tmp/ && PYTHONPATH=/path/to/other python /tmp/relay_packet.py`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from rtp.call import Call, MediaEndpoint, Party  # noqa: E402
except ImportError:  # a tree from before the call types moved into rtp
    from b2bua.call import Call, MediaEndpoint, Party  # type: ignore[no-redef]  # noqa: E402
from rtp import g711  # noqa: E402
from rtp.prompts import load_prompts  # noqa: E402
from rtp.relay import CallRelay, recorder_factory  # noqa: E402

PACKETS = 1000
PER_SECOND = 50
EXT = ("10.0.0.1", 20000)
USER = ("172.16.0.1", 30000)
_HEADER = struct.Struct("!BBHII")


def make_call(i: int, record: bool) -> Call:
    return Call(call_id=f"relay-{i:03d}", direction="inbound", from_uri="sip:+441632960999@carrier",
                to_uri="sip:441632960000@pbx", ddi="441632960000", user="alice", started=datetime.now(UTC),
                record_at_answer=record, parties=(Party("external", "carrier"), Party("user", "alice")))


def run(record: bool, repeat: int, directory: Path) -> float:
    """Best CPU microseconds per `receive` over `repeat` relays."""
    prompts = load_prompts()
    rng = np.random.default_rng(7)
    speech = [g711.encode((rng.standard_normal(160) * 2000).astype(np.int16), 0) for _ in range(PER_SECOND)]
    packets = [_HEADER.pack(0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x1111) + speech[i % PER_SECOND]
               for i in range(PACKETS)]
    clock = time.thread_time
    best = float("inf")
    for r in range(repeat):
        relay = CallRelay(make_call(r, record), prompts, recorder_factory(directory, "silence") if record else None)
        relay.set_media(0, MediaEndpoint(EXT, EXT[0]), 0.0)
        relay.set_media(1, MediaEndpoint(USER, USER[0]), 0.0)
        relay.answered(0.0)
        receive = relay.receive
        spent = 0.0
        now = 0.0
        for first in range(0, PACKETS, PER_SECOND):
            started = clock()
            for i in range(first, first + PER_SECOND):
                now = i * 0.02
                receive(0, packets[i], EXT, now)
            spent += clock() - started
            if now >= relay.next_flush:
                relay.tick(now)
        relay.close(now + 0.02)
        best = min(best, spent)
    return best / PACKETS * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        result = {"recording_us": round(run(True, args.repeat, directory), 3),
                  "no_recording_us": round(run(False, args.repeat, directory), 3)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"receive: {result['recording_us']} us/packet recording, {result['no_recording_us']} us/packet not recording")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
