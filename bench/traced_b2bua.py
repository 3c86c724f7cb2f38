"""`python -m b2bua` with its allocations traced, for `bench/load.py --memory`.

    python bench/traced_b2bua.py run --config flows.toml     # the b2bua command's arguments

tracemalloc (TRACE_FRAMES frames per allocation) starts before anything is imported; SIGUSR1
writes a snapshot to $B2BUA_SNAPSHOT.1 and SIGUSR2 to $B2BUA_SNAPSHOT.2 (the bench sends the
first once the B2BUA listens, the second while the calls stream), then touches the path
with a ".done" suffix. Tracing makes the process several times slower: use it for where
memory goes, never for speed or loss figures.

`owner_of` and `OWNERS` say which part of the project an allocation belongs to, by the
innermost project file on its traceback; `bench/rtp_core.py --memory` uses the same split.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from collections import defaultdict
from pathlib import Path

TRACE_FRAMES = 6

#: (path fragment, owner): the first fragment found on an allocation's traceback, innermost
#: frame first, names its owner. Order matters: the specific files before their package.
OWNERS = (
    ("rtp/fastpath.py", "media: leg table (stream state + recorder wait rows)"),
    ("rtp/timeline.py", "media: recorder timelines + stream clocks"),
    ("rtp/recorder.py", "media: recorder objects and sidecar data"),
    ("rtp/disk_writer.py", "media: writer queue and file handles"),
    ("rtp/mux.py", "media: shared ports, sessions, routes"),
    ("rtp/engine.py", "media: sessions (per-call sockets)"),
    ("rtp/", "media: relays, legs, key-press machines (rtp/ other)"),
    ("b2bua/transaction.py", "SIP: transactions (messages kept for retransmission)"),
    ("b2bua/dialog.py", "SIP: dialogs"),
    ("b2bua/registrar.py", "SIP: registrar bindings"),
    ("b2bua/bindings_store.py", "SIP: registrar bindings"),
    ("b2bua/auth.py", "SIP: digest auth (nonces)"),
    ("b2bua/nonce_counts.py", "SIP: digest auth (nonces)"),
    ("b2bua/message.py", "SIP: parsed messages"),
    ("b2bua/headers.py", "SIP: parsed messages"),
    ("b2bua/sdp.py", "SIP: SDP"),
    ("b2bua/anchoring.py", "SIP: SDP"),
    ("b2bua/config.py", "SIP: configuration"),
    ("b2bua/", "SIP: calls, forking, routing (b2bua/ other)"),
    ("bench/", "the bench's own"),
)


def owner_of(traceback: tracemalloc.Traceback) -> str:
    """The owner of one allocation (tracemalloc keeps the oldest frame first)."""
    for frame in reversed(traceback):
        name = frame.filename.replace("\\", "/")
        for key, owner in OWNERS:
            if key in name:
                return owner
    return "other (interpreter, numpy, asyncio, stdlib)"


def by_owner(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> dict[str, int]:
    """Bytes `after` holds that `before` did not, by owner, largest first."""
    totals: dict[str, int] = defaultdict(int)
    for stat in after.statistics("traceback"):
        totals[owner_of(stat.traceback)] += stat.size
    for stat in before.statistics("traceback"):
        totals[owner_of(stat.traceback)] -= stat.size
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def top_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int = 15) -> list[str]:
    """The allocation sites (file:line) that grew most."""
    return [str(stat) for stat in after.compare_to(before, "lineno")[:count]]


def _install(path: str) -> None:
    def dump(signum: int, _frame: object) -> None:
        suffix = "1" if signum == signal.SIGUSR1 else "2"
        tracemalloc.take_snapshot().dump(f"{path}.{suffix}")
        Path(f"{path}.{suffix}.done").touch()

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, dump)


def main() -> int:
    tracemalloc.start(TRACE_FRAMES)
    _install(os.environ["B2BUA_SNAPSHOT"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from b2bua.cli import main as b2bua_main

    sys.argv[0] = "b2bua"
    return b2bua_main()


if __name__ == "__main__":
    sys.exit(main())
