"""SIP parsing speed: our b2bua.message against sipmessage (PyPI), on the test samples.

    python bench/sip_parser.py [--seconds 1.0]

Prints, per sample, messages/s for each parser (or why it failed), then one JSON line.
The samples are tests/samples/sip_messages.py: real-world shapes our tests prove we read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2bua.message import parse_message  # noqa: E402
from tests.samples.sip_messages import ALL  # noqa: E402


def ours(data: bytes) -> object:
    m = parse_message(data)
    # Touch what the B2BUA reads of every message, so both parsers do comparable work.
    return m.call_id, m.cseq, m.via[0].branch, m.from_tag, m.to_tag


def theirs(data: bytes) -> object:
    from sipmessage import Message

    m = Message.parse(data)
    return m.headers.get("Call-ID"), m.headers.get("CSeq"), m.headers.get("Via"), m.headers.get("From")


def rate(fn, data: bytes, seconds: float) -> float | str:
    try:
        fn(data)
    except Exception as exc:  # the point is to report it, not to stop
        return f"fails: {type(exc).__name__}: {exc}"[:70]
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            fn(data)
        n += 100
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="measuring time per sample and parser")
    args = ap.parse_args()
    results = {}
    print(f"{'sample':<24} {'b2bua.message msg/s':>20} {'sipmessage msg/s':>20}")
    for name, text in ALL.items():
        data = text.encode()
        a = rate(ours, data, args.seconds)
        b = rate(theirs, data, args.seconds)
        results[name] = {"ours": a, "sipmessage": b}
        fa = f"{a:,.0f}" if isinstance(a, float) else a
        fb = f"{b:,.0f}" if isinstance(b, float) else b
        print(f"{name:<24} {fa:>20} {fb:>20}")
    ok = [r["ours"] for r in results.values() if isinstance(r["ours"], float)]
    median = sorted(ok)[len(ok) // 2] if ok else 0
    failures = sum(1 for r in results.values() if not isinstance(r["sipmessage"], float))
    print(json.dumps({"median_msgs_per_s_ours": round(median), "sipmessage_failures": failures, "samples": len(results)}))


if __name__ == "__main__":
    main()
