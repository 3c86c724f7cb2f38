"""The recordings index at scale: search N recordings by date range and number.

    python bench/recordings_index.py                     # 100,000 recordings, 200 queries of each kind
    python bench/recordings_index.py --recordings 1000000 --queries 50
    python bench/recordings_index.py --store redis       # the cluster's index (a private redis-server)

Fills an index (the SQLite store `b2bua run` uses, in a temporary file) with N synthetic
sidecars spread over a year, 300 DDIs and 20,000 caller numbers, then times queries as the
REST API runs them (a page of 50, newest first): a date range (one random day), a number
(a random DDI, all time), both (a DDI within a random week), a user within a month, and
page 2 of a date range (through the cursor). Prints the median and 95th percentile per
kind; the last line is one JSON object. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2bua.recordings_service.index import Query, SqliteIndex, decode_cursor  # noqa: E402
from b2bua.recordings_service.redis_index import RedisIndex  # noqa: E402

YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)


def sidecar(i: int, rng: random.Random) -> dict:
    started = YEAR_START + timedelta(seconds=rng.uniform(0, 365 * 86400))
    seconds = rng.uniform(5, 900)
    ddi = f"4416329{rng.randrange(300):05d}"
    caller = f"+44770{rng.randrange(20000):07d}"
    iso = lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z")  # noqa: E731
    return {
        "call_id": f"{started:%Y%m%dT%H%M%S}-{i:08x}", "direction": rng.choice(["inbound", "inbound", "outbound"]),
        "from": f"sip:{caller}@carrier.example", "to": f"sip:{ddi}@pbx.example", "ddi": ddi,
        "user": f"user{rng.randrange(200)}", "route": [], "parties": [],
        "started": iso(started), "ended": iso(started + timedelta(seconds=seconds)),
        "sample_rate": 8000, "channels": 2, "pause": "silence",
        "segments": [[0.0, round(seconds / 2, 2)], [round(seconds / 2 + 3, 2), round(seconds, 2)]],
        "events": [{"t": round(seconds / 2, 2), "event": "paused", "by": "user"},
                   {"t": round(seconds / 2 + 3, 2), "event": "resumed", "by": "user"}],
    }


@contextlib.contextmanager
def private_redis(folder: Path):
    import redis

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store", choices=["sqlite", "redis"], default="sqlite",
                    help="redis: a private redis-server on a free port (the cluster's index)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.store == "redis":
            index = RedisIndex(stack.enter_context(private_redis(Path(tmp))))
        else:
            index = SqliteIndex(Path(tmp) / "index.sqlite3")
            index.db.execute("PRAGMA synchronous=OFF")  # the fill only; queries are what is measured
        t = time.perf_counter()
        for i in range(args.recordings):
            data = sidecar(i, rng)
            index.add(data, f"{data['started'][:4]}/{data['started'][5:7]}/{data['started'][8:10]}/{data['call_id']}.json")
        if args.store == "sqlite":
            index.db.execute("PRAGMA synchronous=NORMAL")
        fill = time.perf_counter() - t
        print(f"filled {index.count():,} recordings in {fill:.1f} s ({args.recordings / fill:,.0f}/s, one commit each)")

        def day() -> tuple[float, float]:
            start = YEAR_START + timedelta(days=rng.randrange(365))
            return start.timestamp(), (start + timedelta(days=1)).timestamp()

        def week() -> tuple[float, float]:
            start = YEAR_START + timedelta(days=rng.randrange(358))
            return start.timestamp(), (start + timedelta(days=7)).timestamp()

        def month() -> tuple[float, float]:
            start = YEAR_START + timedelta(days=rng.randrange(335))
            return start.timestamp(), (start + timedelta(days=30)).timestamp()

        ddi = lambda: f"4416329{rng.randrange(300):05d}"  # noqa: E731

        def page2() -> None:
            first = index.search(Query(*day(), limit=50))
            if first.next:
                index.search(Query(*day(), limit=50, after=decode_cursor(first.next)))

        kinds = {
            "date range (1 day)": lambda: index.search(Query(*day(), limit=50)),
            "number (all time)": lambda: index.search(Query(number=ddi(), limit=50)),
            "number + date (1 week)": lambda: index.search(Query(*week(), number=ddi(), limit=50)),
            "caller number + month": lambda: index.search(
                Query(*month(), number=f"44770{rng.randrange(20000):07d}", limit=50)),
            "user + month": lambda: index.search(Query(*month(), user=f"user{rng.randrange(200)}", limit=50)),
            "date range, two pages": page2,
        }
        result = {"recordings": args.recordings}
        for name, fn in kinds.items():
            fn()  # warm
            ms = sorted(timed(fn, args.queries))
            median, p95 = statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]
            print(f"{name:28s} median {median:7.3f} ms   p95 {p95:7.3f} ms")
            result[name] = {"median_ms": round(median, 3), "p95_ms": round(p95, 3)}
        index.close()
    result["store"] = args.store
    print(json.dumps(result))


if __name__ == "__main__":
    main()
