"""SIP parsing speed: our b2bua.message against sipmessage (PyPI), on the test fixtures.

    python bench/sip_parser.py [--seconds 0.5]

The inputs are tests/fixtures/sip/*.sip: real-world shapes (baresip, SIPp, Linphone,
Yealink, Cisco, Asterisk, carrier compact+folded, LF-only) that tests/test_message.py
proves we read. Both parsers are asked for what the B2BUA reads of every message
(Call-ID, CSeq, top Via branch, From tag) so they do comparable work; sipmessage's
header values are then parsed by sipmessage's own classes where it has them.

Prints one row per fixture (messages/s, or why a parser failed on it), a totals row,
and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from b2bua.message import parse_message  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "sip"
#: Calls per timing check: keeps perf_counter() out of the measurement.
BATCH = 200


def ours(data: bytes) -> object:
    m = parse_message(data)
    return m.call_id, m.cseq, m.branch, m.from_tag


def theirs(data: bytes) -> object:
    from sipmessage import Message

    m = Message.parse(data)
    h = m.headers
    via = h.get("Via") or ""
    return h.get("Call-ID"), h.get("CSeq"), via.split("branch=", 1)[-1].split(";", 1)[0], h.get("From")


def rate(fn: Callable[[bytes], object], data: bytes, seconds: float) -> float | str:
    """Messages per second, or the error the parser raised on this input."""
    try:
        fn(data)
    except Exception as exc:  # the point is to report it, not to stop
        return f"fails: {type(exc).__name__}: {exc}"[:48]
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(BATCH):
            fn(data)
        n += BATCH
    return n / (time.perf_counter() - start)


def fmt(value: float | str) -> str:
    return f"{value:,.0f}" if isinstance(value, float) else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="measuring time per fixture and parser")
    args = ap.parse_args()
    import sipmessage  # noqa: F401  (fail early and clearly when it is not installed)

    rows: dict[str, dict[str, float | str]] = {}
    print(f"{'fixture':<34} {'bytes':>6} {'b2bua.message msg/s':>20} {'sipmessage msg/s':>50}")
    for path in sorted(FIXTURES.glob("*.sip")):
        data = path.read_bytes()
        a, b = rate(ours, data, args.seconds), rate(theirs, data, args.seconds)
        rows[path.stem] = {"ours": a, "sipmessage": b}
        print(f"{path.stem:<34} {len(data):>6} {fmt(a):>20} {fmt(b):>50}")
    ours_ok = [r["ours"] for r in rows.values() if isinstance(r["ours"], float)]
    both = [(r["ours"], r["sipmessage"]) for r in rows.values()
            if isinstance(r["ours"], float) and isinstance(r["sipmessage"], float)]
    theirs_failed = sorted(name for name, r in rows.items() if not isinstance(r["sipmessage"], float))
    ours_failed = sorted(name for name, r in rows.items() if not isinstance(r["ours"], float))
    median_ours = statistics.median(ours_ok) if ours_ok else 0.0
    median_theirs = statistics.median(b for _, b in both) if both else 0.0
    ratio = statistics.median(b / a for a, b in both) if both else 0.0
    print(f"{'median (ours: all; sipmessage: parsed)':<41} {median_ours:>20,.0f} {median_theirs:>50,.0f}")
    print(json.dumps({
        "fixtures": len(rows),
        "median_msgs_per_s_ours": round(median_ours),
        "median_msgs_per_s_sipmessage": round(median_theirs),
        "sipmessage_speedup_where_both_parse": round(ratio, 2),
        "ours_failures": ours_failed,
        "sipmessage_failures": theirs_failed,
    }))


if __name__ == "__main__":
    main()
